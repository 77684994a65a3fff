"""``learn-features report``: run the ranking experiment and write its report.

``register(subparsers)`` is called by ``learn_features/cli.py``; heavy imports (torch,
LightGBM, matplotlib) happen inside ``cmd_report`` so ``--help`` stays instant. A
``LearnFeaturesError`` propagates to the main CLI, which prints it and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ranking.config import ExperimentConfig

HELP = "rank with baseline and LEARN rankers on a time split; write report.html/.md/.json (paper Tables 6-7)"


def report_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config of a ``report`` invocation: the file, then ``--set``, then ``--run-dir``.

    ``--run-dir`` is the shortcut for ``embeddings.run_dir`` and clears explicit snapshot
    paths, which would otherwise win over the run directory.
    """
    from ranking.config import load_config

    overrides = list(args.set or [])
    if args.run_dir:
        overrides += [f"embeddings.run_dir={json.dumps(args.run_dir)}", "embeddings.user_paths=[]", "embeddings.item_paths=[]"]
    return load_config(args.config, overrides)


def cmd_report(args: argparse.Namespace) -> int:
    from ranking.experiment import run_ranking_experiment
    from ranking.report import write_report

    results = run_ranking_experiment(report_config(args))
    paths = write_report(results, args.out)
    if not args.quiet:
        for note in results.notes:
            print(f"note: {note}", file=sys.stderr)
    print(f"report: {paths['html']}\nmarkdown: {paths['md']}\njson: {paths['json']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help=HELP, description=HELP)
    parser.add_argument("-c", "--config", required=True, help="ranking experiment TOML (see docs/ranking.md, ranking/configs/)")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. split.valid_fraction=0.2 (repeatable)"
    )
    parser.add_argument(
        "--run-dir",
        help="LEARN run directory whose embeddings/ folder holds the user/item embedding Parquet files "
        "(overrides embeddings.run_dir and any explicit embedding paths)",
    )
    parser.add_argument("--out", required=True, help="directory for report.html, report.md, report.json and plots/")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not repeat the report's notes on stderr")
    parser.set_defaults(func=cmd_report)
    return parser
