"""Shared pytest configuration. Fixtures that start real peers live in their own modules under tests/
and are imported by the test files that use them."""
