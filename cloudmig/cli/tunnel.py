"""cloudmig tunnel commands (being built)."""
