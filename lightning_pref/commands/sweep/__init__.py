"""``python -m lightning_pref sweep``: a grid x seeds of fit runs, locally or as a SLURM array."""
