"""Running a study: the runner and scheduler, the manifest writer, power sampling, probes, instrumentation, overhead measurements and the outlier rule."""
