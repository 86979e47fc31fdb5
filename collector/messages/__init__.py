"""What arrives from the fleet, decoded: one MQTT message -> a validated wire message or a dead letter
(ingest and fleet push both read devices' messages through it)."""
