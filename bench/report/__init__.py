"""Outputs as exporters over one Results: summaries, plots, the markdown and HTML report, the issue summary, validation and the comparison of studies."""
