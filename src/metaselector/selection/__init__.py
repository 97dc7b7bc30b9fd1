"""Model selection: MetaSelector, its simplified variant, the sample-level selector, oracles."""
