"""Metrics (Prometheus) and, later, traces."""
