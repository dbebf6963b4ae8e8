"""``featkit probe``: how good a tap's features are for a labelled dataset (linear or kNN probe)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from featkit.choices import ProbeKind, SelectionMetric
from featkit.cli._console import console as make_console
from featkit.cli._options import JsonOpt, QuietOpt, TapOpt

REPORT_MAX_CLASSES = 30  # a wider confusion matrix does not fit a terminal; --json carries it whole


def probe(
    store: Annotated[Path, typer.Argument(
        help="Feature store: its split column decides train/val/test; without one, a seeded stratified "
             "--test-fraction of the rows is the test split.")],
    tap: TapOpt = None,
    test: Annotated[Path | None, typer.Option(
        "--test", help="A separate test store, extracted with the same settings (STORE is then all train).")] = None,
    kind: Annotated[ProbeKind, typer.Option(
        help="linear: logistic regression, C chosen on val or by 5-fold CV on train; knn: cosine kNN.")
    ] = ProbeKind.linear,
    k: Annotated[int, typer.Option("--k", min=1, help="Neighbours for --kind knn.")] = 20,
    temperature: Annotated[float, typer.Option(help="Vote temperature for --kind knn.")] = 0.07,
    metric: Annotated[SelectionMetric, typer.Option(
        help="What chooses C on validation (the val split or the CV folds).")] = SelectionMetric.accuracy,
    test_fraction: Annotated[float, typer.Option(
        "--test-fraction", help="Share of the rows held out (stratified) for test when STORE has no split column.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seeds that held-out test split and the CV folds.")] = 0,
    allow_overlap: Annotated[bool, typer.Option(
        "--allow-overlap", help="Warn instead of refusing when test images are also training images (same path "
                                "or same content).")] = False,
    report: Annotated[bool, typer.Option(
        "--report", help=f"Also print per-class accuracy, precision and the confusion matrix (up to "
                         f"{REPORT_MAX_CLASSES} classes; --json carries it whole).")] = False,
    quiet: QuietOpt = False,
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
    data = probe_data(fs, tap, open_features(test) if test is not None else None, allow_overlap=allow_overlap,
                      test_fraction=test_fraction, seed=seed)
    if kind is ProbeKind.knn:
        result = run_knn_probe(data.train.X, data.train.y, data.test.X, data.test.y, k=k, temperature=temperature)
        summary = f"kNN (k={k}, T={temperature})"
    else:
        val = (data.val.X, data.val.y) if data.val is not None else None
        result = run_linear_probe(data.train.X, data.train.y, data.test.X, data.test.y, val=val, grid=DEFAULT_GRID,
                                  metric=metric.value, seed=seed, progress=not quiet and sys.stderr.isatty())
        cv = result.folds is not None and result.folds > 1
        chosen_on = "val" if val else (f"{result.folds}-fold CV on train" if cv else "a split of train")
        summary = f"linear probe (C={result.best_C:.3g} chosen on {chosen_on})"
    per_class = result.per_class()
    payload = {"store": str(store), "tap": tap, "kind": kind.value, "test_split": data.test.name,
               "holdout": None if data.holdout is None else {"fraction": data.holdout.fraction,
                                                             "seed": data.holdout.seed},
               "shared_files": len(data.shared), "settings": fs.settings.to_json(), **result.to_dict(),
               "per_class": per_class}
    if as_json:
        print(json.dumps(payload, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else str(o)))
        return
    console = make_console()
    if data.holdout is not None:
        console.print(data.holdout.describe())
    console.print(f"{fs.settings.model} {tap} ({data.train.X.shape[1]:,}-d), {summary}: "
                  f"top-1 {result.top1:.1%}, top-5 {result.top5:.1%} on {result.n_test:,} {data.test.name} images "
                  f"(trained on {len(data.train.y):,}) in {result.seconds:.1f} s")
    console.print(f"mean per-class accuracy {result.mean_per_class:.1%}")
    if report:
        _print_report(console, result.classes, result.confusion, per_class)


def _print_report(console, classes: list, confusion: list[list[int]], per_class: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Column, Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def right(name: str) -> Column:
        return Column(escape(name), justify="right")

    table = Table("class", right("test images"), right("accuracy"), right("precision"),
                  title="Per class (accuracy = recall)")
    for row in per_class:
        table.add_row(escape(row["class"]), f"{row['support']:,}", pct(row["accuracy"]), pct(row["precision"]))
    console.print(table)
    if len(classes) > REPORT_MAX_CLASSES:
        console.print(f"confusion matrix: {len(classes)} classes, too wide to print; --json carries it "
                      "(\"confusion\", true classes as rows).")
        return
    matrix = Table("true \\ predicted", *(right(str(c)) for c in classes), title="Confusion matrix (test counts)")
    for name, counts in zip(classes, confusion, strict=True):
        matrix.add_row(escape(str(name)), *(f"{n:,}" for n in counts))
    console.print(matrix)
