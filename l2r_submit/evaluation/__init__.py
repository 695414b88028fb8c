"""Layer 2: the official metrics, scoring, evaluate, reference, compare and the report."""
