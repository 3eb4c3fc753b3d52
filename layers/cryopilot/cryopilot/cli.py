"""``cryopilot``: the operator's command line.

Commands that need the local stand-ins import them lazily; none of this runs inside Lambda.
"""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from cryopilot_sim.demo import DemoOptions, run_demo

    summary = run_demo(DemoOptions(profile=args.profile, pace=args.speed, fail=args.fail, quiet=args.quiet))
    wanted = "FAILED" if args.fail != "none" else "SUCCEEDED"
    return 0 if summary["status"] == wanted and summary["cluster_deleted"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryopilot", description="cryo-EM dataset in, 3D map out.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="one whole run on the local stand-ins, shown live")
    demo.add_argument(
        "--profile",
        choices=["cgrp", "glp1r", "spike"],
        default="cgrp",
        help="which of the white paper's datasets to replay (default: cgrp)",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=3000.0,
        help="simulated seconds per wall-clock second while waiting (default: 3000)",
    )
    demo.add_argument(
        "--fail",
        choices=["none", "cluster-create", "job"],
        default="none",
        help="rehearse a fault: the run must end failed, mailed, cluster deleted",
    )
    demo.add_argument("--quiet", action="store_true", help="no live display")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["build_parser", "main"]
