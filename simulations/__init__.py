"""Studying: scenarios, data import, the offline runner with the live planner and dispatcher, economics."""
