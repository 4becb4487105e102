"""The drift function: every drift statistic of production inputs against each version's profile."""

from functions.drift.store import Window, WindowStore

__all__ = ["Window", "WindowStore"]
