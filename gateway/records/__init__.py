"""Call records: what a call leaves behind."""
