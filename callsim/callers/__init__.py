"""Simulated callers: one whole call through a carrier peer, and what the caller heard."""
