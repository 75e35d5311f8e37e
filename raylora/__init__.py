"""raylora."""
