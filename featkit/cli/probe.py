"""``featkit probe``: how good a tap's features are for a labelled dataset (linear or kNN probe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import ProbeKind, SelectionMetric
from featkit.cli._console import console as make_console
from featkit.cli._options import JsonOpt, TapOpt


def probe(
    store: Annotated[Path, typer.Argument(help="Feature store (its split column decides train/val/test).")],
    tap: TapOpt = None,
    test: Annotated[Path | None, typer.Option(
        "--test", help="A separate test store (STORE is then all train).")] = None,
    kind: Annotated[ProbeKind, typer.Option(
        help="linear: logistic regression, C chosen on val or by 5-fold CV; knn: cosine kNN.")] = ProbeKind.linear,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for --kind knn.")] = 20,
    temperature: Annotated[float, typer.Option(help="Vote temperature for --kind knn.")] = 0.07,
    metric: Annotated[SelectionMetric, typer.Option(
        help="What chooses C on the validation split.")] = SelectionMetric.accuracy,
    as_json: JsonOpt = False,
) -> None:
    """Fit a linear (or kNN) probe on a store's features and report test accuracy.

    Example: featkit probe feats/ --tap fc7
    """
    import numpy as np

    from featkit.probes.knn import run_knn_probe
    from featkit.probes.protocol import DEFAULT_GRID, run_linear_probe
    from featkit.probes.splits import probe_data
    from featkit.store.reader import open_features

    fs = open_features(store)
    tap = fs.resolve_tap(tap)
    data = probe_data(fs, tap, open_features(test) if test is not None else None)
    if kind is ProbeKind.knn:
        result = run_knn_probe(data.train.X, data.train.y, data.test.X, data.test.y, k=k, temperature=temperature)
        summary = f"kNN (k={k}, T={temperature})"
    else:
        val = (data.val.X, data.val.y) if data.val is not None else None
        result = run_linear_probe(data.train.X, data.train.y, data.test.X, data.test.y, val=val,
                                  grid=DEFAULT_GRID, metric=metric.value)
        cv = result.folds is not None and result.folds > 1
        chosen_on = "val" if val else (f"{result.folds}-fold CV on train" if cv else "a split of train")
        summary = f"linear probe (C={result.best_C:.3g} chosen on {chosen_on})"
    payload = {"store": str(store), "tap": tap, "kind": kind.value, "test_split": data.test.name,
               "settings": fs.settings.to_json(), **result.to_dict()}
    if as_json:
        print(json.dumps(payload, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
        return
    console = make_console()
    console.print(f"{fs.settings.model} {tap} ({data.train.X.shape[1]:,}-d), {summary}: "
                  f"top-1 {result.top1:.1%}, top-5 {result.top5:.1%} on {result.n_test:,} {data.test.name} images "
                  f"(trained on {len(data.train.y):,}) in {result.seconds:.1f} s")
    console.print(f"mean per-class accuracy {result.mean_per_class:.1%}")
