"""The topic model: training examples, the model, its on-disk cache, the live router, cross-validation."""
