"""The agent daemon and its configuration, status and CLI."""
