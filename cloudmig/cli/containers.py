"""cloudmig containers commands (being built)."""
