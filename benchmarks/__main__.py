"""`python -m benchmarks NAME [args...]` runs benchmarks/bench_NAME.py's main(argv);
`python -m benchmarks all` runs every benchmark with its default (quick) settings;
`python -m benchmarks list` lists them."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(p.stem[len("bench_"):] for p in here.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "list"):
        print(__doc__)
        print("benchmarks:", ", ".join(available()))
        return 0
    names = available() if argv[0] == "all" else [argv[0]]
    rest = [] if argv[0] == "all" else argv[1:]
    for name in names:
        if name not in available():
            print(f"unknown benchmark {name!r}; available: {', '.join(available())}", file=sys.stderr)
            return 2
        print(f"== benchmark {name}")
        importlib.import_module(f"benchmarks.bench_{name}").main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
