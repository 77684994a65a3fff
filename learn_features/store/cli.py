"""``learn-features publish``, ``materialize``, ``verify-online`` and ``embed-items``: the Feast-facing commands.

``register`` adds them to the main CLI's subparsers. Heavy imports (Feast, the towers)
happen inside the commands so that ``--help`` and the other commands stay fast. As in
Feast's own CLI, ``-f/--feature-store-yaml`` picks the store config; ``-c/--config`` is
never a Feast YAML here (it is the TOML job config of the pipeline and report commands).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from learn_features.data.tables import read_table, require_columns
from learn_features.embeddings_io import write_table
from learn_features.errors import LearnFeaturesError
from learn_features.run import RunDir

NEXT_STEPS = "(cd {repo} && feast apply) && learn-features materialize --repo {repo} && learn-features verify-online --repo {repo}"

PUBLISH_HELP = "Publish a run's user and item embeddings into the Feast offline sources."
PUBLISH_DESCRIPTION = f"""{PUBLISH_HELP}

Reads <run-dir>/embeddings/{{user,item}}_embeddings.parquet and manifest.json, validates
them, and commits them atomically as one publication under <repo>/data/offline/.
Re-running with the same run is a no-op. The primary method's new-item rule
(eval.cold_bias / eval.cold_share), if any, is published with the vectors. Then load them online:
  {NEXT_STEPS.format(repo="<repo>")}

With --replay the vectors go, stamped at the run's data cut, into <run-dir>/feast_replay
instead: a per-run copy of the repo for point-in-time joins of historical impressions.
"""

MATERIALIZE_HELP = "Load the publications an online store lacks into it, whatever their event time."
MATERIALIZE_DESCRIPTION = f"""{MATERIALIZE_HELP}

Calls Feast's FeatureStore.materialize(start, end) with the window taken from the
publications not yet loaded into this config's online store (start: the earliest of their
event times; end: now, or 1 microsecond past the latest of them). Plain
`feast materialize-incremental` starts a never-expiring view's first window one year
before now, so it loads nothing from an older publication (e.g. publish --event-time as-of).
Which publications each online store holds is kept in <repo>/data/materialized.json; a
re-run with nothing pending is a no-op. Run `feast apply` first, and verify-online after.
Exit codes: 0 loaded or nothing pending, 2 bad input (nothing published, repo not applied).
"""

EMBED_HELP = "Embed new catalog items from text with a trained run and push them online."
EMBED_DESCRIPTION = f"""{EMBED_HELP}

The catalog is a CSV or Parquet file with an item_id column and the text columns the
run was trained on (title, genres, tags, ...). With --push the vectors go straight to
the online store through the repo's PushSource, so the items can be ranked at once;
the run's model version must be the published (active) one. Pushed catalog rows are
kept with the push, so after a rollout --repush-stale (instead of --catalog) embeds
every pushed item that the active version lacks again, with the new run.
"""

VERIFY_HELP = "Check that the online store serves the active publication (exit 1 if not)."
VERIFY_DESCRIPTION = f"""{VERIFY_HELP}

Reads a random sample of the active publication's users and items back through the
serving client and compares model version and vector bytes with what was published,
then reads back the pushed items whose latest vector is of an older model version
(unscorable after a rollout; fixed by embed-items --repush-stale --push).
Run it after `learn-features materialize`: a materialize that exits 0 can still have
written nothing (Feast's Ray engine only logs failed online writes). Exit codes: 0 all
served, 1 some sampled ids missing or different, or stale pushed items, 2 bad input.
"""
EXIT_VERIFY_FAILED = 1
FEATURE_STORE_YAML_HELP = "feature_store YAML, relative to the repo, e.g. feature_store.redis.yaml (default: feature_store.yaml)"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``publish``, ``materialize``, ``verify-online`` and ``embed-items`` subcommands."""
    raw = argparse.RawDescriptionHelpFormatter
    publish = subparsers.add_parser("publish", help=PUBLISH_HELP, description=PUBLISH_DESCRIPTION, formatter_class=raw)
    publish.add_argument("--run-dir", type=Path, required=True, help="run folder whose embed step has finished")
    _add_repo_options(publish, feature_store_yaml=False)
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

    materialize = subparsers.add_parser(
        "materialize", help=MATERIALIZE_HELP, description=MATERIALIZE_DESCRIPTION, formatter_class=raw
    )
    _add_repo_options(materialize)
    materialize.add_argument("--full", action="store_true", help="reload every publication (e.g. into a flushed Redis)")
    materialize.add_argument("--end", help="load only publications stamped at or before this ISO time (no zone: UTC)")
    materialize.set_defaults(func=run_materialize)

    verify = subparsers.add_parser("verify-online", help=VERIFY_HELP, description=VERIFY_DESCRIPTION, formatter_class=raw)
    _add_repo_options(verify)
    verify.add_argument("--sample", type=int, default=10_000, help="ids checked per entity (default: 10000)")
    verify.add_argument("--seed", type=int, default=0, help="seed of the sample")
    verify.set_defaults(func=run_verify_online)

    embed = subparsers.add_parser("embed-items", help=EMBED_HELP, description=EMBED_DESCRIPTION, formatter_class=raw)
    embed.add_argument("--run-dir", type=Path, required=True, help="trained run whose item tower embeds the items")
    rows = embed.add_mutually_exclusive_group(required=True)
    rows.add_argument("--catalog", type=Path, help="CSV or Parquet with item_id and text columns")
    rows.add_argument(
        "--repush-stale",
        action="store_true",
        help="embed again every pushed item whose latest vector is of another model version than the run's "
        "(from the catalog rows recorded with its push), e.g. after a rollout",
    )
    embed.add_argument("--push", action="store_true", help="push the vectors to the online store")
    embed.add_argument("--output", type=Path, help="also write the vectors to this Parquet file")
    _add_repo_options(embed)
    embed.set_defaults(func=run_embed_items)


def _add_repo_options(parser: argparse.ArgumentParser, feature_store_yaml: bool = True) -> None:
    parser.add_argument("--repo", type=Path, default=Path("feature_repo"), help="Feast repo folder (default: feature_repo)")
    if feature_store_yaml:
        parser.add_argument("-f", "--feature-store-yaml", dest="feature_store_yaml", help=FEATURE_STORE_YAML_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help="print results and errors only, no progress or hints")


def run_publish(args: argparse.Namespace) -> int:
    if args.replay:
        return _run_replay(args)
    from learn_features.store.publish import publish_run

    result = publish_run(args.run_dir, args.repo, args.event_time)
    pub = result.publication
    if not result.created:
        print(f"{pub.model_version} is already published at {pub.published_at.isoformat()} ({pub.publication_id}); nothing to do")
        return 0
    print(
        f"published {pub.model_version}: {pub.rows.get('user', 0)} users, {pub.rows.get('item', 0)} items, "
        f"dim {pub.dim}, event time {pub.published_at.isoformat()} -> {pub.path}"
    )
    if pub.new_item_rule is not None:
        rule = pub.new_item_rule
        print(f"new items ranked by the rule {rule.rule} {rule.value:g}" + (f" (window {rule.window})" if rule.rule == "share" else "")
              + "; ItemIndex and LearnFeatureClient.candidates apply it")
    if not args.quiet:
        print(f"next: {NEXT_STEPS.format(repo=args.repo)}")
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    if args.event_time != "now":
        raise LearnFeaturesError("publish --replay always stamps the run's as_of; drop --event-time")
    from learn_features.store.replay import publish_replay

    result = publish_replay(args.run_dir, args.repo)
    pub = result.publication
    state = "published" if result.created else "already published"
    print(f"replay: {pub.model_version} {state} as of {pub.published_at.isoformat()} in {RunDir(args.run_dir).feast_replay} (applied)")
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    from learn_features.data.split import parse_time
    from learn_features.store.materialize import materialize_publications

    end = parse_time(args.end, "--end") if args.end else None
    result = materialize_publications(args.repo, args.feature_store_yaml, args.full, end, args.quiet)
    if not result.loaded:
        print(f"{result.store}: nothing to materialize, every publication is loaded (--full reloads them all)")
        return 0
    ids = ", ".join(pub.publication_id for pub in result.loaded)
    print(f"{result.store}: loaded {len(result.loaded)} publication(s) [{ids}], window {result.start.isoformat()} to {result.end.isoformat()}")  # type: ignore[union-attr]
    if not args.quiet:
        flag = f" -f {args.feature_store_yaml}" if args.feature_store_yaml else ""
        print(f"next: learn-features verify-online --repo {args.repo}{flag}")
    return 0


def read_catalog(path: Path) -> pd.DataFrame:
    """New catalog rows, read exactly as training reads its catalog (CSV cells stay strings),
    so an item's prompt, and hence its vector, is the same as in a batch run."""
    catalog = read_table(path)
    require_columns(catalog, ("item_id",), str(path))
    return catalog


def run_embed_items(args: argparse.Namespace) -> int:
    if not args.push and args.output is None:
        raise LearnFeaturesError("embed-items: nothing to do; pass --push and/or --output")
    from learn_features.trained_run import embed_catalog_items

    if args.repush_stale:
        from learn_features.store.publish import run_model_version
        from learn_features.store.published import stale_catalog_rows

        version = run_model_version(args.run_dir)
        catalog = stale_catalog_rows(args.repo, version)
        if catalog.empty:
            print(f"every pushed item already has a {version} vector; nothing to do")
            return 0
    else:
        catalog = read_catalog(args.catalog)
    table = embed_catalog_items(args.run_dir, catalog, progress=not args.quiet)
    if args.output is not None:
        write_table(table, args.output)
        print(f"wrote {len(table.ids)} item embeddings to {args.output}")
    if args.push:
        from learn_features.store.push import push_item_embeddings

        pub = push_item_embeddings(args.repo, table, args.feature_store_yaml, catalog)
        print(f"pushed {len(table.ids)} items of {table.model_version} online; recorded as {pub.publication_id}")
    return 0


def run_verify_online(args: argparse.Namespace) -> int:
    from learn_features.store.verify import verify_online

    version, checks = verify_online(args.repo, args.feature_store_yaml, args.sample, args.seed)
    print(f"online store vs published {version}:")
    for check in checks:
        if not (args.quiet and check.ok):
            print(f"  {check}")
    return 0 if all(check.ok for check in checks) else EXIT_VERIFY_FAILED
