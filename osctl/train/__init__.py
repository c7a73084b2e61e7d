"""Training: objective, EMA, checkpoints, state and the loop behind `osctl train`."""
