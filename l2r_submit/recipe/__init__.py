"""Layer 4: the paper's recipe: external cohorts, pseudo-labels, the plan of its steps."""
