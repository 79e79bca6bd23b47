"""``clusterplan demo``: the closed loop on this machine in one command.

    clusterplan demo [--out DIR] [--quick | --full] [--profile PROFILE.yaml] [--steps S] [--warmup W]

Quick calibration into ``DIR/local-cpu.yaml`` (the committed ``hardware_profiles/local-cpu.yaml``
is left alone), a search for a small model on 2 local ranks with that profile, the top three plans
executed with ``clusterplan run``, predicted vs measured compared, and ``DIR/report.md`` (+ plots)
written; its path is the last line printed. Progress goes to stderr as it runs.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="calibrate, plan, run the top 3 plans and report (this machine, < 5 min)",
                              description="Quick calibration of this machine, a plan search for a small model on 2 "
                                          "local ranks, the top three plans executed and compared, a report written.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="quick calibration (default)")
    mode.add_argument("--full", dest="quick", action="store_false", help="full calibration (several minutes)")
    p.add_argument("--profile", default=None, help="skip calibration and use this profile")
    p.add_argument("--model", default=None, help="model preset (default tiny-gpt)")
    p.add_argument("--steps", type=int, default=8, help="steps per run incl. warm-up (default 8)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps (default 3)")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from planner.demo import DEMO_MODEL, DemoError, run_demo
    from planner.errors import InputError
    from planner.io import check_output_dir
    from planner.profile_yaml import load_profile

    if args.profile is not None:
        load_profile(args.profile)  # bad path: one line, exit 2, before anything runs
    check_output_dir(args.out, "out")

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        result = run_demo(args.out, quick=args.quick, progress=progress, steps=args.steps, warmup=args.warmup,
                          model_name=args.model or DEMO_MODEL, profile=args.profile)
    except InputError:
        raise
    except DemoError as exc:
        print(f"clusterplan demo: failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one clear line instead of a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"clusterplan demo: failed: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    st = result.stats
    med = st.get("median_abs_error_pct")
    print(f"demo done in {result.wall_s:.0f} s: median |step-time error| "
          f"{'n/a' if med is None else f'{med:.1f}%'} over "
          f"{'all (contended) runs' if st.get('contended') else str(st.get('n_ok', 0)) + ' runs'}; "
          f"search's first plan measured fastest: {result.best_predicted_is_best_measured}", file=sys.stderr)
    print(result.report_path)
    return 0
