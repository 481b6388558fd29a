"""Placeholder module replaced by the XLong converter (being written)."""
