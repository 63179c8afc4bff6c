"""kdbench: distill a frozen teacher into a student and measure what happened."""

__version__ = "0.1.0"
