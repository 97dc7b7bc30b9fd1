"""Evaluation: the paper's metrics, per-user losses, tables, figures and the report."""
