"""The browser agent: a page (built from web/ into ``static/``) that joins the fleet, and its server."""
