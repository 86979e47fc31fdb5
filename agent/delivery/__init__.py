"""Getting results off the device without losing one: outbox, MQTT transport, receipts, full-disk keeper."""
