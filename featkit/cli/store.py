"""``featkit info``: what a feature store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import JsonOpt, StoreArg

app = typer.Typer(help="Feature store maintenance: upgrade a store to the current format.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(store: StoreArg) -> None:
    """Rewrite a store of format v1 (written by an earlier featkit) as v2 in place, atomically: rows and features stay.

    Shard files are hard-linked into one segment, not copied; a kill at any moment leaves a store that opens.

    Example: featkit store upgrade feats/
    """
    from featkit.store.upgrade import upgrade_store

    done = upgrade_store(store)
    console = make_console()
    if done.was != 1:
        console.print(f"{store} is already a store of format v{done.was}; nothing to do.")
        return
    how = "linked" if done.linked else "copied (this file system has no hard links)"
    console.print(f"upgraded {store} to format v2: {plural(done.rows, 'row')} in {plural(done.shards, 'shard')}, "
                  f"files {how} into one segment.")


def plural(n: int, word: str, many: str = "") -> str:
    """``1 shard``, ``2 shards``, ``1,024 rows``."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def info(
    store: StoreArg,
    failures: Annotated[bool, typer.Option("--failures", help="List every skipped file with its reason.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a feature store: settings, rows, taps (with their aliases), labels and skipped files.

    Example: featkit info feats/ --failures
    """
    from featkit.store.reader import open_features

    fs = open_features(store)
    s = fs.settings
    fails = fs.failures
    if as_json:
        labels = fs.rows["label"].dropna()
        print(json.dumps({
            "store": str(store), "rows": len(fs), "shards": fs.shard_count, "segments": fs.segment_count,
            "format": fs.version, "settings": s.to_json(),
            "taps": {t: {**meta, "aliases": list(record.aliases) if (record := s.tap(t)) else []}
                     for t, meta in fs.manifest["taps"].items()},
            "classes": int(labels.nunique()), "splits": fs.rows["split"].value_counts().to_dict(),
            "failures": fails[["path", "reason", "message"]].to_dict(orient="records") if failures else len(fails),
        }))
        return
    console = make_console()
    where = f" in {plural(fs.segment_count, 'segment')}" if fs.version != 1 else " (format v1: featkit store upgrade)"
    console.print(f"[bold]{store}[/]: {plural(len(fs), 'row')}, {plural(fs.shard_count, 'shard')}{where}")
    console.print(f"model {s.model}, weights {s.weights.id} (sha256 {s.weights.sha256[:12]}…)"
                  + (f", from {s.weights.path}" if s.weights.path else ""))
    pre = s.preprocess
    console.print(f"preprocess: resize {pre.resize}, crop {pre.crop}, {pre.interpolation}; "
                  f"pool {s.pool}, l2 {s.l2}, dtype {s.dtype}, precision {s.precision}")
    for tap, meta in fs.manifest["taps"].items():
        record = s.tap(tap)
        aliases = f" (also {', '.join(record.aliases)})" if record is not None and record.aliases else ""
        folder = f"features/{tap}/" if fs.version == 1 else f"segments/*/features/{tap}/"
        console.print(f"  tap {tap}{aliases}: {meta['dims']:,}-d {meta['dtype']} → {folder}")
    labels = fs.rows["label"].dropna()
    if len(labels):
        splits = ", ".join(f"{k} {v:,}" for k, v in fs.rows["split"].value_counts().items()) or "-"
        console.print(f"labels: {plural(labels.nunique(), 'class', 'classes')}; splits: {splits}")
    if len(fails):
        reasons = ", ".join(f"{k} {v:,}" for k, v in fails["reason"].value_counts().items())
        console.print(f"skipped {plural(len(fails), 'file')}: {reasons}"
                      + ("" if failures else f" (list them: featkit info {store} --failures)"))
        if failures:
            for row in fails.itertuples():
                console.print(f"  {row.path}: {row.reason} ({row.message})", markup=False)
