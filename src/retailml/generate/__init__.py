"""A synthetic retail world and its transactions, in the UCI Online Retail II CSV layout."""

from retailml.generate.generator import GenerateSummary, generate

__all__ = ["GenerateSummary", "generate"]
