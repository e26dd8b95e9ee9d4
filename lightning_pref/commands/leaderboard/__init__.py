"""``python -m lightning_pref leaderboard``: train and evaluate every MiniPick method."""
