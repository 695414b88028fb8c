"""Layer 5: command groups of the CLI beyond cli.py's own (each imports lower layers lazily)."""
