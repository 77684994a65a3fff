"""``learn-features publish`` and ``learn-features embed-items``: the Feast-facing commands.

``register`` adds both to the main CLI's subparsers. Heavy imports (Feast, the towers)
happen inside the commands so that ``--help`` and the other commands stay fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from learn_features.data.tables import read_table, require_columns
from learn_features.embeddings_io import write_table
from learn_features.errors import LearnFeaturesError

PUBLISH_HELP = "Publish a run's user and item embeddings into the Feast offline sources."
PUBLISH_DESCRIPTION = f"""{PUBLISH_HELP}

Reads <run-dir>/embeddings/{{user,item}}_embeddings.parquet and manifest.json, validates
them, and commits them atomically as one publication under <repo>/data/offline/.
Re-running with the same run is a no-op. Then load them online from the repo folder:
  cd <repo> && feast apply && feast materialize-incremental $(date -u +%Y-%m-%dT%H:%M:%S)

With --replay the vectors go, stamped at the run's data cut, into <run-dir>/feast_replay
instead: a per-run copy of the repo for point-in-time joins of historical impressions.
"""

EMBED_HELP = "Embed new catalog items from text with a trained run and push them online."
EMBED_DESCRIPTION = f"""{EMBED_HELP}

The catalog is a CSV or Parquet file with an item_id column and the text columns the
run was trained on (title, genres, tags, ...). With --push the vectors go straight to
the online store through the repo's PushSource, so the items can be ranked at once;
the run's model version must be the published (active) one.
"""


VERIFY_HELP = "Check that the online store serves the active publication (exit 1 if not)."
VERIFY_DESCRIPTION = f"""{VERIFY_HELP}

Reads a random sample of the active publication's users and items back through the
serving client and compares model version and vector bytes with what was published.
Run it after `feast materialize`: a materialize that exits 0 can still have written
nothing (Feast's Ray engine only logs failed online writes). Exit codes: 0 all served,
1 some sampled ids missing or different, 2 bad input.
"""
EXIT_VERIFY_FAILED = 1
CONFIG_HELP = "feature_store YAML inside the repo, e.g. feature_store.redis.yaml (default: feature_store.yaml)"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``publish``, ``embed-items`` and ``verify-online`` subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    publish = subparsers.add_parser("publish", help=PUBLISH_HELP, description=PUBLISH_DESCRIPTION, formatter_class=raw)
    publish.add_argument("--run-dir", type=Path, required=True, help="run folder whose embed step has finished")
    _add_repo_option(publish)
    publish.add_argument(
        "--event-time",
        default="now",
        help="Feast event timestamp of the rows: 'now' (default), 'as-of' (the run's data cutoff, for "
        "offline replays), or an ISO time with zone; must be later than every earlier publication",
    )
    publish.add_argument(
        "--replay",
        action="store_true",
        help="instead of publishing live, publish the run's vectors as of its data cut into its own "
        "replay repo <run-dir>/feast_replay (definitions copied from --repo, registry applied), for "
        "point-in-time joins of historical impressions such as the ranking report's",
    )
    publish.set_defaults(func=run_publish)

    embed = subparsers.add_parser("embed-items", help=EMBED_HELP, description=EMBED_DESCRIPTION, formatter_class=raw)
    embed.add_argument("--run-dir", type=Path, required=True, help="trained run whose item tower embeds the items")
    embed.add_argument("--catalog", type=Path, required=True, help="CSV or Parquet with item_id and text columns")
    embed.add_argument("--push", action="store_true", help="push the vectors to the online store")
    embed.add_argument("--output", type=Path, help="also write the vectors to this Parquet file")
    _add_repo_option(embed)
    embed.add_argument("--config", default=None, help=CONFIG_HELP)
    embed.set_defaults(func=run_embed_items)

    verify = subparsers.add_parser("verify-online", help=VERIFY_HELP, description=VERIFY_DESCRIPTION, formatter_class=raw)
    _add_repo_option(verify)
    verify.add_argument("--config", default=None, help=CONFIG_HELP)
    verify.add_argument("--sample", type=int, default=10_000, help="ids checked per entity (default: 10000)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the sample")
    verify.set_defaults(func=run_verify_online)


def _add_repo_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", type=Path, default=Path("feature_repo"), help="Feast repo folder (default: feature_repo)")


def run_publish(args: argparse.Namespace) -> int:
    if args.replay:
        return _run_replay(args)
    from learn_features.feast_publish import publish_run

    result = publish_run(args.run_dir, args.repo, args.event_time)
    pub = result.publication
    if not result.created:
        print(f"{pub.model_version} is already published at {pub.published_at.isoformat()} ({pub.publication_id}); nothing to do")
        return 0
    print(
        f"published {pub.model_version}: {pub.rows.get('user', 0)} users, {pub.rows.get('item', 0)} items, "
        f"dim {pub.dim}, event time {pub.published_at.isoformat()} -> {pub.path}"
    )
    print(f"next: cd {args.repo} && feast apply && feast materialize-incremental $(date -u +%Y-%m-%dT%H:%M:%S)")
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    if args.event_time != "now":
        raise LearnFeaturesError("publish --replay always stamps the run's as_of; drop --event-time")
    from learn_features.feast_replay import publish_replay, replay_repo_path

    result = publish_replay(args.run_dir, args.repo)
    pub = result.publication
    state = "published" if result.created else "already published"
    print(f"replay: {pub.model_version} {state} as of {pub.published_at.isoformat()} in {replay_repo_path(args.run_dir)} (applied)")
    return 0


def read_catalog(path: Path) -> pd.DataFrame:
    """New catalog rows, read exactly as training reads its catalog (CSV cells stay strings),
    so an item's prompt, and hence its vector, is the same as in a batch run."""
    catalog = read_table(path)
    require_columns(catalog, ("item_id",), str(path))
    if catalog.empty:
        raise LearnFeaturesError(f"{path}: catalog has no rows")
    return catalog


def run_embed_items(args: argparse.Namespace) -> int:
    if not args.push and args.output is None:
        raise LearnFeaturesError("embed-items: nothing to do; pass --push and/or --output")
    from learn_features.pch.inference import embed_catalog_items

    catalog = read_catalog(args.catalog)
    table = embed_catalog_items(args.run_dir, catalog)
    if args.output is not None:
        write_table(table, args.output)
        print(f"wrote {len(table.ids)} item embeddings to {args.output}")
    if args.push:
        from learn_features.feast_push import push_item_embeddings

        pub = push_item_embeddings(args.repo, table, args.config)
        print(f"pushed {len(table.ids)} items of {table.model_version} online; recorded as {pub.publication_id}")
    return 0


def run_verify_online(args: argparse.Namespace) -> int:
    from learn_features.feast_verify import verify_online

    version, checks = verify_online(args.repo, args.config, args.sample, args.seed)
    print(f"online store vs published {version}:")
    for check in checks:
        print(f"  {check}")
    return 0 if all(check.ok for check in checks) else EXIT_VERIFY_FAILED
