"""Callbridge: phone calls bridged to Gemini Live agents."""

__version__ = "0.1.0"
