"""The collector's paho clients: settings from mqttlink, and the faster receive path for ingest."""
