"""Deciding: tariffs and billing, forecasts, the receding-horizon LP planner and fallback policies.

Knows nothing of devices, the controller or simulations (see docs/architecture.md).
"""
