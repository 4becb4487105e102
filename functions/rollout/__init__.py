"""The rollout function: a registered model version goes out, stable or canary."""
