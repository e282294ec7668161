"""The controller: what the CLI (and plans) do across hosts, through their agents."""
