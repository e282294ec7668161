"""cloudmig lab commands (being built)."""
