"""MetaSelector: user-level adaptive model selection for CTR prediction by meta-learning."""

__version__ = "0.1.0"
