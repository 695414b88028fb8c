"""Layer 3: test-time registration: predict, stages, search, instance optimisation, QC."""
