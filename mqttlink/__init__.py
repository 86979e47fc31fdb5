"""The paho-mqtt client both sides use, built from :class:`wire.broker.BrokerSettings` (imports wire and
paho only)."""
