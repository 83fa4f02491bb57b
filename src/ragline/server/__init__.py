"""The OpenAI-compatible HTTP server: a thin layer over the services."""
