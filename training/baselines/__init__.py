"""The classical baselines scored beside every model: weighted centroid, kNN and the fitted ML grid search."""
