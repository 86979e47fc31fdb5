"""MQTT in, SQLite out: parse (dead letters), the ingest loop, receipts, workers, health."""
