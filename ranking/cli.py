"""``learn-features report``: run the ranking experiment and write its report.

``register(subparsers)`` is called by ``learn_features/cli.py``; heavy imports (torch,
LightGBM, matplotlib) happen inside ``cmd_report`` so ``--help`` stays instant. A
``LearnFeaturesError`` propagates to the main CLI, which prints it and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

HELP = "rank with baseline and LEARN rankers on a time split; write report.html/.md/.json (paper Tables 6-7)"


def cmd_report(args: argparse.Namespace) -> int:
    from ranking.config import load_config
    from ranking.experiment import run_ranking_experiment
    from ranking.report import write_report

    config = load_config(args.config)
    if args.run_dir:
        config.embeddings.run_dir = args.run_dir
        config.embeddings.user_paths, config.embeddings.item_paths = [], []
    results = run_ranking_experiment(config)
    paths = write_report(results, args.out)
    for note in results.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {paths['html']}\nmarkdown: {paths['md']}\njson: {paths['json']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help=HELP, description=HELP)
    parser.add_argument("-c", "--config", required=True, help="ranking experiment TOML (see docs/ranking.md)")
    parser.add_argument(
        "--run-dir",
        help="LEARN run directory whose embeddings/ folder holds the user/item embedding Parquet files "
        "(overrides embeddings.run_dir and any explicit embedding paths)",
    )
    parser.add_argument("--out", required=True, help="directory for report.html, report.md, report.json and plots/")
    parser.set_defaults(func=cmd_report)
    return parser
