"""Training: the FTRL-Proximal optimizer and supervised pretraining of base models."""
