"""The running collector: ingest workers and the chunk server in one service, and its CLI (serve, status)."""
