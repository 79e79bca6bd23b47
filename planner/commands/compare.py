"""``clusterplan compare``: join each run's prediction with its measurement; report and plots."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="predicted vs measured for executed runs: Markdown, CSV, PNG plots, JSON",
        description="Join each RUN_DIR's prediction (summary.json) with what the executor measured.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default=None, metavar="REPORT_DIR",
                   help="write compare.md, compare.csv and PNG plots here")
    p.add_argument("--json", action="store_true", help="print one JSON object (runs, failed, statistics)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    import json

    from planner.io import check_output_dir
    from planner.report import compare_runs, markdown
    from planner.report_files import write_report

    if args.out:
        check_output_dir(args.out, "out")  # before any work
    comp = compare_runs(args.run_dirs)
    paths = write_report(comp, args.out) if args.out else []
    if args.json:
        print(json.dumps(comp.to_json(), indent=2, sort_keys=True, default=float))
        return 0
    print(markdown(comp), end="")
    for p in paths:
        print(f"wrote {p}")
    return 0
