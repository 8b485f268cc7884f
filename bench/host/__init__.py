"""Facts about the machine: host identity, GPUs, model assets and their fingerprint, port locks."""
