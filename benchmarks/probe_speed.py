"""How long the linear-probe protocol's regularisation sweep takes with featkit and with scikit-learn.

One run, one machine, the same data and the same validation split for both:

* **data**: seeded synthetic features shaped like a CNN's pooled features of a CIFAR-100-like dataset:
  ``--n`` training rows (a stratified 20 % of them held out for validation), ``--test`` test rows,
  ``--dims`` non-negative (ReLU) dimensions, ``--classes`` classes. Each class is a Gaussian in a 128-d
  latent space, projected to ``--dims`` dimensions through a fixed random matrix, plus noise, then
  ReLU: correlated, sparse-ish, not linearly separable (about 78 % test accuracy at 100 classes, in the
  range of ImageNet features on CIFAR-100).
* **featkit**: :func:`featkit.probes.select_C` over the grid (L-BFGS in torch, features standardised once,
  each fit warm-started from the previous C's solution), then the refit on train + val at the chosen C and
  the test accuracy. Rows for float32 with tolerance 1e-4 (the protocol's default, scikit-learn's tolerance)
  and float64 with 1e-6 (LinearProbe's own default; ``--dtypes``).
* **scikit-learn**: ``StandardScaler`` (fitted once) + ``LogisticRegression(solver="lbfgs", max_iter=1000)``
  fitted for every C of the same grid (from scratch, as a hand-written sweep does), the same choice rule (best
  validation accuracy, ties to the smaller C), the refit and the test accuracy.

The grid is the protocol's 45 log-spaced values from 1e-6 to 1e5 (``--grid-points`` changes how many).
``--device auto`` runs featkit on a GPU when there is one. ``--quick`` shrinks everything for a smoke run.

Usage:  python benchmarks/probe_speed.py [--quick] [--n 10000] [--dims 2048] [--classes 100]
            [--grid-points 45] [--device auto] [--dtypes float32,float64] [--skip-sklearn]
            [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from featkit.probes.linear import LinearProbe
from featkit.probes.protocol import select_C


def make_features(n: int, dims: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    latent = 128
    centres = rng.normal(size=(classes, latent))
    projection = rng.normal(size=(latent, dims)) / np.sqrt(latent)
    y = np.arange(n) % classes
    rng.shuffle(y)
    z = centres[y] + rng.normal(scale=3.0, size=(n, latent))
    X = np.maximum(0.0, z @ projection + rng.normal(scale=0.8, size=(n, dims)))
    return X.astype(np.float32), y


def sklearn_sweep(X_fit, y_fit, X_val, y_val, grid) -> tuple[float, list[float]]:
    scaler = StandardScaler().fit(X_fit)  # once, as a careful hand-written sweep does
    X_fit, X_val = scaler.transform(X_fit), scaler.transform(X_val)
    scores = []
    for C in grid:
        model = LogisticRegression(C=float(C), solver="lbfgs", max_iter=1000).fit(X_fit, y_fit)
        scores.append(float(model.score(X_val, y_val)))
    return float(grid[int(np.argmax(scores))]), scores


def sklearn_refit_accuracy(X_train, y_train, X_test, y_test, C: float) -> float:
    scaler = StandardScaler().fit(X_train)
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=1000).fit(scaler.transform(X_train), y_train)
    return float(model.score(scaler.transform(X_test), y_test))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="training rows (train + val)")
    ap.add_argument("--test", type=int, default=2_000, help="test rows")
    ap.add_argument("--dims", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--grid-points", type=int, default=45)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtypes", default="float32,float64", help="featkit rows to time (float64 is slow)")
    ap.add_argument("--skip-sklearn", action="store_true", help="time featkit only")
    ap.add_argument("--quick", action="store_true", help="2,000 × 256, 20 classes, 9 grid points")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.test, args.dims, args.classes, args.grid_points = 2000, 500, 256, 20, 9
    warnings.simplefilter("ignore", ConvergenceWarning)
    grid = np.logspace(-6, 5, args.grid_points)
    X, y = make_features(args.n + args.test, args.dims, args.classes)
    X_train, y_train, X_test, y_test = X[: args.n], y[: args.n], X[args.n:], y[args.n:]
    fit_idx, val_idx = train_test_split(np.arange(args.n), test_size=0.2, stratify=y_train, random_state=0)
    device = ("cuda" if args.device == "auto" and torch.cuda.is_available()
              else ("cpu" if args.device == "auto" else args.device))

    rows = []
    for dtype in args.dtypes.split(","):
        start = time.perf_counter()
        tol = 1e-4 if dtype == "float32" else 1e-6  # the protocol's default; LinearProbe's own
        sel = select_C(X_train, y_train, grid=grid, folds=1, seed=0, device=device, dtype=dtype, tol=tol)
        sweep = time.perf_counter() - start
        assert sel.n_val == len(val_idx)  # the same carved split as scikit-learn's below
        acc = LinearProbe(C=sel.best_C, device=device, dtype=dtype, tol=tol).fit(X_train, y_train).score(X_test, y_test)
        rows.append({"method": f"featkit LinearProbe ({device}, {dtype}, tol {tol:g}, warm-started)", "sweep_s": sweep,
                     "best_C": sel.best_C, "val_acc": max(sel.val_scores), "test_acc": float(acc)})
        print(f"{rows[-1]['method']}: sweep {sweep:.1f} s, C={sel.best_C:.3g}, test {acc:.4f}", flush=True)
    if not args.skip_sklearn:
        start = time.perf_counter()
        best_C, scores = sklearn_sweep(X_train[fit_idx], y_train[fit_idx], X_train[val_idx], y_train[val_idx], grid)
        sweep = time.perf_counter() - start
        acc = sklearn_refit_accuracy(X_train, y_train, X_test, y_test, best_C)
        rows.append({"method": "scikit-learn LogisticRegression (lbfgs, max_iter 1000)", "sweep_s": sweep,
                     "best_C": best_C, "val_acc": max(scores), "test_acc": acc})
        print(f"{rows[-1]['method']}: sweep {sweep:.1f} s, C={best_C:.3g}, test {acc:.4f}", flush=True)

    base = rows[-1]["sweep_s"] if not args.skip_sklearn else None
    print(f"\n{args.n:,} × {args.dims:,} features, {args.classes} classes, {len(grid)} C values "
          f"({grid[0]:.0e} … {grid[-1]:.0e}), val {len(val_idx):,}, test {args.test:,}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    print("| method | sweep (s) | speed-up vs scikit-learn | chosen C | val acc | test acc |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = f"{base / r['sweep_s']:.2f}×" if base else "-"
        print(f"| {r['method']} | {r['sweep_s']:.1f} | {speed} | {r['best_C']:.3g} | {r['val_acc']:.4f} | "
              f"{r['test_acc']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
