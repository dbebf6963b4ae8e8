"""``featkit info``: what a feature store holds."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from featkit.cli._console import console as make_console
from featkit.cli._options import JsonOpt, StoreArg


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
            "store": str(store), "rows": len(fs), "shards": len(fs.manifest["shards"]), "settings": s.to_json(),
            "taps": {t: {**meta, "aliases": list(record.aliases) if (record := s.tap(t)) else []}
                     for t, meta in fs.manifest["taps"].items()},
            "classes": int(labels.nunique()), "splits": fs.rows["split"].value_counts().to_dict(),
            "failures": fails[["path", "reason", "message"]].to_dict(orient="records") if failures else len(fails),
        }))
        return
    console = make_console()
    console.print(f"[bold]{store}[/]: {plural(len(fs), 'row')}, {plural(len(fs.manifest['shards']), 'shard')}")
    console.print(f"model {s.model}, weights {s.weights.id} (sha256 {s.weights.sha256[:12]}…)"
                  + (f", from {s.weights.path}" if s.weights.path else ""))
    pre = s.preprocess
    console.print(f"preprocess: resize {pre.resize}, crop {pre.crop}, {pre.interpolation}; "
                  f"pool {s.pool}, l2 {s.l2}, dtype {s.dtype}, precision {s.precision}")
    for tap, meta in fs.manifest["taps"].items():
        record = s.tap(tap)
        aliases = f" (also {', '.join(record.aliases)})" if record is not None and record.aliases else ""
        console.print(f"  tap {tap}{aliases}: {meta['dims']:,}-d {meta['dtype']} → features/{tap}/")
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
