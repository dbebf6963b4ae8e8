"""``featkit info``: what a feature store holds."""

from __future__ import annotations

from featkit.cli._console import console as make_console
from featkit.cli._options import StoreArg


def info(store: StoreArg) -> None:
    """Summarise a feature store: settings, rows, taps, labels and skipped files."""
    from featkit.store.reader import open_features

    fs = open_features(store)
    s = fs.settings
    console = make_console()
    console.print(f"[bold]{store}[/]: {len(fs):,} rows, {len(fs.manifest['shards'])} shards")
    console.print(f"model {s.model}, weights {s.weights.id} (sha256 {s.weights.sha256[:12]}…)")
    pre = s.preprocess
    console.print(f"preprocess: resize {pre.resize}, crop {pre.crop}, {pre.interpolation}; "
                  f"pool {s.pool}, l2 {s.l2}, dtype {s.dtype}, precision {s.precision}")
    for tap, meta in fs.manifest["taps"].items():
        console.print(f"  tap {tap}: {meta['dims']:,}-d {meta['dtype']} → features/{tap}/")
    labels = fs.rows["label"].dropna()
    if len(labels):
        console.print(f"labels: {labels.nunique()} classes; splits: {fs.rows['split'].value_counts().to_dict() or '-'}")
    fails = fs.failures
    if len(fails):
        console.print(f"skipped {len(fails)} files: {fails['reason'].value_counts().to_dict()}")
