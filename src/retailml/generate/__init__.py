"""A synthetic retail world and its transactions, in the UCI Online Retail II CSV layout."""

from retailml.generate.data import generate_data
from retailml.generate.generator import GENERATOR_VERSION, GenerateSummary, generate

__all__ = ["GENERATOR_VERSION", "GenerateSummary", "generate", "generate_data"]
