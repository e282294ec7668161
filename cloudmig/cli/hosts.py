"""cloudmig hosts commands (being built)."""
