"""``python -m lightning_pref bench``: training and on-policy throughput."""
