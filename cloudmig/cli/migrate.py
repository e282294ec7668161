"""cloudmig migrate commands (being built)."""
