"""The drift function: PSI of production inputs against each version's reference profile."""

from functions.drift.store import DriftScore, DriftStore

__all__ = ["DriftScore", "DriftStore"]
