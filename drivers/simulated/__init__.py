"""Simulated plant physics and Modbus servers."""
