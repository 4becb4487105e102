"""``python -m benchmarks [--quick] [NAME ...]``: run every benchmark module in this folder."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

from benchmarks.common import report

SKIP = {"common", "sink", "__main__"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes: all in under 3 minutes")
    parser.add_argument("names", nargs="*", help="only these benchmark modules")
    args = parser.parse_args(argv)
    folder = Path(__file__).resolve().parent
    names = args.names or sorted(
        m.name for m in pkgutil.iter_modules([str(folder)]) if m.name not in SKIP
    )
    failed = []
    for name in names:
        started = time.monotonic()
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            rows = module.run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            print(f"benchmark {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        path = report(name, rows)
        print(f"{name}: {time.monotonic() - started:.1f} s -> {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
