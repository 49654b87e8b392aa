"""retailml: an end-to-end retail machine-learning pipeline on Spark, Delta Lake and MLflow."""

__version__ = "0.1.0"
