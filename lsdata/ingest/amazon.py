"""Placeholder module replaced by the Amazon parsers (being written)."""
