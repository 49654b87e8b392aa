"""Shared ML pieces: metrics, MLflow tracking and the registry's champion gate."""
