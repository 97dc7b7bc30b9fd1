"""Data stages: sources (raw files), features (encoding), splits (per-user parts)."""
