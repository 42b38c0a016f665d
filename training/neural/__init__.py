"""The neural model family: IQ features and a network trained by gradient (presets tiny, small, large)."""
