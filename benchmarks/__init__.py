"""Benchmarks: each module has ``run(quick: bool) -> list[Row]`` and is run by ``make bench``."""
