"""The REST API under ``/api/v1`` (FastAPI in the dashboard's web app) and its access roles."""
