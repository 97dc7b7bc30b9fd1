"""One seed of an experiment: its split, tasks and base models (context), and the selection methods."""
