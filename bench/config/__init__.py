"""What to run: the profile, its expansion into a plan, the memory ladder, the workload and jobs."""
