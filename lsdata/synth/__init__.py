"""Seeded generators of raw files in each supported format (outputs are labelled synthetic)."""
