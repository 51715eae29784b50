"""`oyster-exp-report PATH`: summary table, tidy CSV and plots for a run or a sweep directory."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oyster-exp-report", description=__doc__)
    parser.add_argument("path", type=Path, help="a run dir (outputs/runs/...) or a sweep dir (outputs/multirun/...)")
    args = parser.parse_args(argv)
    from oyster_exp.reporting.aggregate import write_sweep_report

    try:
        out = write_sweep_report(args.path)
    except FileNotFoundError as e:
        print(f"oyster-exp-report: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
