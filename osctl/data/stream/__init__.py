"""The training data stream: sample index -> sampler -> DataLoader -> batches (see :mod:`.loader`)."""
