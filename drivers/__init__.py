"""Talking to devices: async Modbus transport, device profiles as data, SunSpec discovery, device roles.

``drivers.simulated`` holds the plant physics and serves it on real Modbus servers.
Knows nothing of the optimizer, the controller or simulations (see docs/architecture.md).
"""
