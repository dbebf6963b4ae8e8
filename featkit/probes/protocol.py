"""The linear-probe protocol of Kornblith et al. 2019 (as restated in SimCLR appendix B.8).

Choose C on a log grid by the validation metric (the official val split; else, for training sets up to
``CV_MAX_ROWS`` rows, the mean over stratified k folds of train; else a stratified seeded split carved from train),
refit on train + val with that C, report on test. The folds are there because one carved split of a small
dataset is too noisy to choose by: on the 245 ants/bees training photos a 49-image split chose C = 3e-5 (0.78 on
test) where 5-fold cross-validation chooses 3e-3 to 2e-2 (0.86-0.87) for every seed tried. The whole grid is
searched (no coarse-to-fine: that only provably finds the same optimum when the validation curve is unimodal,
which it need not be); fits are warm-started from the previous, more regularised, solution, which keeps the sweep
cheap.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from tqdm.auto import tqdm

from featkit.choices import SelectionMetric
from featkit.errors import FeatkitError, check_choice, check_float, invalid_parameter
from featkit.probes.linear import LinearProbe, ProbeError, standardisation

DEFAULT_GRID = tuple(np.logspace(-6, 5, 45))
# Sweep and refit in float32, stopping at scikit-learn's default tolerance (largest gradient entry 1e-4), unless
# told otherwise: about 4-5x faster than scikit-learn's own sweep on a CPU (benchmarks/probe_speed.py) and native
# on GPUs, at the same test accuracy (tests hold it within 0.5 points of float64 fits to 1e-6). The one
# difference: where a float64 fit keeps iterating toward the exact optimum of a barely regularised (huge C)
# problem, float32 stops earlier, so the largest C values behave a little more regularised. LinearProbe alone
# defaults to float64 and 1e-6, to match scikit-learn's coefficients closely.
PROTOCOL_PROBE = {"dtype": "float32", "tol": 1e-4}
CV_FOLDS = 5
CV_MAX_ROWS = 5000  # above this a single carved split is precise enough, and k sweeps cost k times as much
# Told after each fit of a C sweep: (fits done, fits in the sweep, the C just fitted).
StepCallback = Callable[[int, int, float], None]


def class_indices(classes: np.ndarray, y) -> np.ndarray:
    """Indices of labels ``y`` in ``classes``; labels never seen in training are an error."""
    y = np.asarray(y)
    idx = np.clip(np.searchsorted(classes, y), 0, len(classes) - 1)
    unseen = classes[idx] != y
    if unseen.any():
        raise ProbeError(f"Label {y[unseen][0]!r} does not occur in the training labels "
                         f"({', '.join(map(str, classes[:10]))}{'...' if len(classes) > 10 else ''}).")
    return idx


def topk_accuracy(scores: np.ndarray, y_idx: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores (all classes if fewer than k)."""
    if scores.ndim == 1:  # a binary decision function: column 1 is its sign
        scores = np.stack([-scores, scores], axis=1)
    if k >= scores.shape[1]:
        return 1.0
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == y_idx[:, None]).any(axis=1).mean())


def confusion(y_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns."""
    return np.bincount(y_idx * n_classes + pred_idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def mean_per_class_accuracy(y_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> float:
    """Accuracy averaged over the classes present in ``y_idx`` (the metric of Caltech-101, Pets, ...)."""
    cm = confusion(y_idx, pred_idx, n_classes)
    present = cm.sum(axis=1) > 0
    return float((np.diag(cm)[present] / cm.sum(axis=1)[present]).mean())


def score(metric: str, y_idx: np.ndarray, pred_idx: np.ndarray, n_classes: int) -> float:
    if metric == "accuracy":
        return float((y_idx == pred_idx).mean())
    return mean_per_class_accuracy(y_idx, pred_idx, n_classes)


@dataclass(frozen=True)
class Selection:
    """The outcome of a C sweep: validation score per C and the chosen C."""

    best_C: float
    metric: str
    grid: tuple[float, ...]
    val_scores: tuple[float, ...]
    n_train: int
    n_val: int  # rows of the validation split (0 when C was chosen by cross-validation on train)
    folds: int  # 1: one validation split; k: mean over k stratified folds of train
    seconds: float


@dataclass(frozen=True)
class ProbeResult:
    """What a probe (linear or kNN) scored on test, in one shape for both.

    Attributes:
        kind: ``linear`` or ``knn``.
        classes: the class labels, in the order of ``confusion``'s rows and columns.
        top1, top5, mean_per_class: test metrics (top-5 is 1.0 with five classes or fewer).
        confusion: test counts, true classes as rows, predicted as columns.
        predictions: the predicted label of each test row.
        n_train, n_val, n_test: rows used (n_val: 0 when C was chosen by cross-validation, and for kNN).
        seconds: the probe's whole time (the C sweep included).
        best_C, metric, grid, val_scores, folds: the linear probe's C selection (None / empty for kNN).
        k, temperature: the kNN probe's settings (None for the linear probe).
    """

    kind: str
    classes: list
    top1: float
    top5: float
    mean_per_class: float
    confusion: list[list[int]]
    predictions: list
    n_train: int
    n_val: int
    n_test: int
    seconds: float
    best_C: float | None = None
    metric: str | None = None
    grid: tuple[float, ...] = ()
    val_scores: tuple[float, ...] = ()
    folds: int | None = None
    k: int | None = None
    temperature: float | None = None

    def per_class(self) -> list[dict]:
        """Each class's test support, accuracy (recall) and precision, from the confusion matrix (None: undefined)."""
        confusion = np.asarray(self.confusion)
        support, predicted, correct = confusion.sum(axis=1), confusion.sum(axis=0), confusion.diagonal()
        return [{"class": str(c), "support": int(support[i]),
                 "accuracy": float(correct[i] / support[i]) if support[i] else None,
                 "precision": float(correct[i] / predicted[i]) if predicted[i] else None}
                for i, c in enumerate(self.classes)]

    def score(self, metric: str) -> float:
        """The test value of a selection metric: ``accuracy`` (top-1) or ``mean_per_class``."""
        return self.mean_per_class if metric == SelectionMetric.mean_per_class else self.top1

    def to_dict(self) -> dict:
        return asdict(self)


def scored_on_test(classes: np.ndarray, scores: np.ndarray, test_y) -> dict:
    """The test fields of a :class:`ProbeResult` from per-class scores (or a binary decision function)."""
    n = len(classes)
    y_idx = class_indices(classes, test_y)
    pred_idx = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
    return {"classes": classes.tolist(), "top1": score("accuracy", y_idx, pred_idx, n),
            "top5": topk_accuracy(scores, y_idx, 5), "mean_per_class": mean_per_class_accuracy(y_idx, pred_idx, n),
            "confusion": confusion(y_idx, pred_idx, n).tolist(), "predictions": classes[pred_idx].tolist(),
            "n_test": len(y_idx)}


def stratified_holdout(y, fraction: float, seed: int, *, what: str = "validation split from train",
                       error: type[FeatkitError] = ProbeError) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (kept, held out) of a seeded split holding out ``fraction`` of every class.

    Args:
        y: the labels.
        fraction: the share held out, in (0, 1).
        seed: seeds the split (scikit-learn's ``train_test_split(stratify=y, random_state=seed)``).
        what: names the split in the error.
        error: the error raised when the labels cannot be split so (a class with a single row, ...).
    """
    check_float("fraction", fraction, "stratified_holdout", low=0, high=1, error=error)
    try:
        kept, held = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
    except ValueError as exc:
        raise error(f"Cannot carve a stratified {what}: {' '.join(str(exc).split())}") from None
    return kept, held


def _sweep(probe_params: dict, grid: np.ndarray, X_train, y_train, X_val, y_val, metric: str,
           on_fit: Callable[[float], None] | None = None) -> np.ndarray:
    """Validation score of each C in ``grid``, each fit warm-started from the previous one; ``on_fit(C)`` after each.

    The features are standardised once for the whole sweep (as each fit would do itself) and handed to the fits
    in their dtype: re-standardising 10,000 × 2,048 float64 copies per C took ~40 % of a sweep's time.
    """
    params = dict(probe_params)
    if params.pop("standardize", True):
        mean, scale = standardisation(X_train)
        dtype = np.float32 if params.get("dtype", "float64") == "float32" else np.float64
        X_train = ((np.asarray(X_train, dtype=np.float64) - mean) / scale).astype(dtype, copy=False)
        X_val = ((np.asarray(X_val, dtype=np.float64) - mean) / scale).astype(dtype, copy=False)
    probe = LinearProbe(warm_start=True, standardize=False, **params)
    scores: list[float] = []
    for C in grid:
        probe.set_params(C=float(C)).fit(X_train, y_train)
        if not scores:
            y_val_idx = class_indices(probe.classes_, y_val)
        pred_idx = class_indices(probe.classes_, probe.predict(X_val))
        scores.append(score(metric, y_val_idx, pred_idx, len(probe.classes_)))
        if on_fit is not None:
            on_fit(float(C))
    return np.asarray(scores)


def _folds_for(y_train, folds: int | str) -> int:
    if folds == "auto":
        if len(y_train) > CV_MAX_ROWS:
            return 1
        smallest = int(np.unique(np.asarray(y_train), return_counts=True)[1].min())
        return min(CV_FOLDS, smallest) if smallest >= 2 else 1
    if not isinstance(folds, (int, np.integer)) or isinstance(folds, bool) or folds < 1:
        raise invalid_parameter("folds", "select_C", "'auto' or an int >= 1 (1: one validation split)", folds,
                                error=ProbeError)
    return int(folds)


def select_C(X_train, y_train, X_val=None, y_val=None, *, grid=DEFAULT_GRID, metric: str = "accuracy",
             val_fraction: float = 0.2, folds: int | str = "auto", seed: int = 0, on_step: StepCallback | None = None,
             **probe_params) -> Selection:
    """Sweep C over ``grid`` (ascending), fitting on train and scoring on val; ties go to the smaller C.

    Without ``X_val``: ``folds`` > 1 scores each C by its mean over stratified folds of train (``"auto"``: 5 folds
    up to ``CV_MAX_ROWS`` training rows), ``folds`` = 1 holds out a stratified ``val_fraction`` of train. Both are
    seeded by ``seed``. The smaller C of a tie is the more regularised model, the safer choice when validation
    cannot tell them apart. ``on_step(done, total, C)`` is called after each fit: once per C with one validation
    split, once per C and fold with k folds (``total`` = len(grid) × folds). ``probe_params`` go to
    :class:`LinearProbe` (device, dtype, max_iter, ...).
    """
    metric = check_choice("metric", metric, SelectionMetric, "select_C", error=ProbeError)
    grid = np.sort(np.asarray(grid, dtype=np.float64).ravel())
    if len(grid) == 0 or not np.all(np.isfinite(grid)) or grid[0] <= 0:
        raise ProbeError("The C grid must hold at least one finite value > 0.")
    if (X_val is None) != (y_val is None):
        raise ProbeError("Give both X_val and y_val, or neither (a validation split is then carved from train).")
    start = time.perf_counter()
    probe_params = {**PROTOCOL_PROBE, **probe_params}
    n_train = len(y_train)
    k = 1 if X_val is not None else _folds_for(y_train, folds)
    done = 0

    def on_fit(C: float) -> None:
        nonlocal done
        done += 1
        if on_step is not None:
            on_step(done, len(grid) * k, C)

    if X_val is not None:
        n_val = len(y_val)
        scores = _sweep(probe_params, grid, X_train, y_train, X_val, y_val, metric, on_fit)
    else:
        X_train, y_train = np.asarray(X_train), np.asarray(y_train)
        if k > 1:
            try:
                splits = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X_train, y_train))
            except ValueError as exc:
                raise ProbeError("Cannot carve a stratified validation split from train: "
                                 f"{' '.join(str(exc).split())}") from exc
        else:
            check_float("val_fraction", val_fraction, "select_C", low=0, high=1, error=ProbeError)
            splits = [stratified_holdout(y_train, val_fraction, seed)]
        scores = np.mean([_sweep(probe_params, grid, X_train[fit], y_train[fit],
                                 X_train[held], y_train[held], metric, on_fit) for fit, held in splits], axis=0)
        n_train, n_val = (n_train, 0) if k > 1 else (len(splits[0][0]), len(splits[0][1]))
    best = int(np.argmax(scores))  # first maximum: the smallest C among ties
    return Selection(best_C=float(grid[best]), metric=metric, grid=tuple(grid.tolist()),
                     val_scores=tuple(float(v) for v in scores), n_train=n_train, n_val=n_val, folds=k,
                     seconds=time.perf_counter() - start)


def run_linear_probe(train_X, train_y, test_X, test_y, *, val=None, grid=DEFAULT_GRID, metric: str = "accuracy",
                     val_fraction: float = 0.2, folds: int | str = "auto", seed: int = 0, progress: bool = False,
                     on_step: StepCallback | None = None, **probe_params) -> ProbeResult:
    """Run the full protocol: :func:`select_C`, refit on train + val with the chosen C, evaluate on test.

    Args:
        train_X: training features, one row per image.
        train_y: training labels.
        test_X: test features.
        test_y: test labels (every one must occur in the training labels).
        val: ``(X_val, y_val)``, an official validation split; None: cross-validate or carve one from train
            (``folds``, see :func:`select_C`).
        grid: the C values to sweep (sorted ascending; ties go to the smaller C).
        metric: what chooses C on validation: ``accuracy`` or ``mean_per_class``.
        val_fraction: the stratified share of train held out for validation when there is no ``val`` and one
            split is carved (``folds`` = 1).
        folds: without ``val``, ``"auto"`` or the number of stratified folds of train to score each C on
            (1: one carved split; see :func:`select_C`).
        seed: seeds the folds or the carved split.
        progress: show a progress bar of the C sweep (which C, how many fits left) on stderr.
        on_step: called after each fit of the sweep as ``on_step(done, total, C)`` (see :func:`select_C`).
        probe_params: passed to :class:`LinearProbe` (device, dtype, max_iter, ...).
    """
    start = time.perf_counter()
    X_val, y_val = val if val is not None else (None, None)
    # redrawn at every fit: a fit takes milliseconds to seconds, and the C being fitted is the news
    with tqdm(desc="C sweep", unit="fit", disable=not progress, dynamic_ncols=True, leave=False, mininterval=0) as bar:

        def step(done: int, total: int, C: float) -> None:
            bar.total = total
            bar.set_postfix_str(f"C={C:.3g}", refresh=False)
            bar.update(1)
            if on_step is not None:
                on_step(done, total, C)

        sel = select_C(train_X, train_y, X_val, y_val, grid=grid, metric=metric, val_fraction=val_fraction,
                       folds=folds, seed=seed, on_step=step, **probe_params)
    if val is not None:
        train_X, train_y = np.concatenate([np.asarray(train_X), np.asarray(X_val)]), np.concatenate(
            [np.asarray(train_y), np.asarray(y_val)])
    probe = LinearProbe(C=sel.best_C, **{**PROTOCOL_PROBE, **probe_params}).fit(train_X, train_y)
    seconds = time.perf_counter() - start
    return ProbeResult(kind="linear", **scored_on_test(probe.classes_, probe.decision_function(test_X), test_y),
                       n_train=sel.n_train, n_val=sel.n_val, seconds=seconds, best_C=sel.best_C, metric=sel.metric,
                       grid=sel.grid, val_scores=sel.val_scores, folds=sel.folds)
