"""Starter specs, shipped inside the package as ``raylora.search_spaces`` (``raylora init`` copies one)."""
