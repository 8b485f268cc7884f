"""The vocabulary every stage shares: paths, errors, formatting, statistics, the metric registry, typed records and manifest, and the results store."""
