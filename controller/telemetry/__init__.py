"""Telemetry sinks: InfluxDB (through a disk outbox), MQTT, and the wiring that starts them from config."""
