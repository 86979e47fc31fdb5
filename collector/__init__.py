"""edgebench collector: the server side (MQTT ingest into SQLite, fleet operations, reports)."""
