"""Run a benchmark: for each dataset × model, get the taps' features from the cache, probe each tap, record it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from featkit._atomic import write_json
from featkit.bench.cache import FeatureCache
from featkit.bench.config import BenchConfig
from featkit.bench.datasets import BenchDataset, resolve_dataset
from featkit.errors import UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    """One probed (dataset, model, tap): the line of results.csv."""

    dataset: str
    model: str
    weights: str
    tap: str  # as asked for on the command line
    layer: str  # the tap's canonical name in the model
    dims: int
    classes: int
    probe: str
    metric: str  # "accuracy" or "mean_per_class": what the dataset's card reports
    score: float  # the value of ``metric`` on test
    top1: float
    top5: float
    best_C: float | None
    n_train: int
    n_test: int
    extracted: bool  # False: the features came from the cache
    extract_seconds: float
    probe_seconds: float
    store: str


@dataclass(frozen=True)
class BenchReport:
    rows: list[BenchRow]
    runs: list[Path]
    seconds: float


def model_taps(models: tuple[str, ...], taps: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """For each model, ``(asked name, canonical name)`` of the taps it has; a tap no model has is an error."""
    from featkit.backbones.registry import describe

    plan: dict[str, list[tuple[str, str]]] = {}
    for model in models:
        spec = describe(model)
        plan[model] = []
        for name in taps:
            try:
                canonical = spec.tap(name).name
            except UnknownNameError:
                continue
            if all(canonical != c for _, c in plan[model]):
                plan[model].append((name, canonical))
    for name in taps:
        if not any(name == asked for pairs in plan.values() for asked, _ in pairs):
            describe(models[0]).tap(name)  # raises the "did you mean" error against the first model
    for model, pairs in plan.items():
        if not pairs:
            raise UnknownNameError(f"{model} has none of the taps {', '.join(taps)}. See: featkit taps {model}")
    return plan


def _versions() -> dict:
    import sklearn

    from featkit._faiss import faiss
    from featkit._versions import library_versions

    return {**library_versions(), "scikit-learn": sklearn.__version__, "faiss": faiss.__version__}


def _probe(cfg: BenchConfig, dataset: BenchDataset, store, tap: str):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from featkit.probes.knn import run_knn_probe
    from featkit.probes.protocol import run_linear_probe
    from featkit.probes.splits import probe_data

    data = probe_data(store, tap)
    if cfg.probe == "knn":
        return data, run_knn_probe(data.train.X, data.train.y, data.test.X, data.test.y, k=cfg.k,
                                   temperature=cfg.temperature)
    val = (data.val.X, data.val.y) if data.val is not None else None
    with warnings.catch_warnings():
        # the least regularised fits of separable data stop at max_iter; the sweep's choice is what matters
        warnings.simplefilter("ignore", ConvergenceWarning)
        return data, run_linear_probe(data.train.X, data.train.y, data.test.X, data.test.y, val=val,
                                      grid=cfg.c_grid, metric=dataset.metric, seed=cfg.seed)


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def run_bench(cfg: BenchConfig, *, progress: bool = False, echo: Callable[[str], None] = log.info) -> BenchReport:
    """Extract what the cache lacks, probe every (dataset, model, tap), write ``runs/*.json``; return the rows.

    ``echo`` receives one line per step (the CLI prints them; by default they go to the log).
    """
    from featkit.store.reader import open_features

    start = time.perf_counter()
    plan = model_taps(cfg.models, cfg.taps)
    datasets = [resolve_dataset(d, data_root=cfg.data_root, per_class=cfg.per_class, download=cfg.download,
                                progress=progress, limit=cfg.limit)
                for d in cfg.datasets]
    cache = FeatureCache(cfg.cache_dir)
    runs_dir = Path(cfg.output) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    rows: list[BenchRow] = []
    runs: list[Path] = []
    total = sum(len(pairs) for pairs in plan.values()) * len(datasets)
    for dataset in datasets:
        for model, pairs in plan.items():
            located = cache.ensure(dataset, model, [c for _, c in pairs], cfg, progress=progress, echo=echo)
            for asked, layer in pairs:
                cached = located[layer]
                store = open_features(cached.store)
                data, result = _probe(cfg, dataset, store, layer)
                row = BenchRow(
                    dataset=dataset.name, model=model, weights=store.settings.weights.id, tap=asked, layer=layer,
                    dims=int(data.train.X.shape[1]), classes=len(result.classes), probe=cfg.probe,
                    metric=dataset.metric, score=result.score(dataset.metric), top1=result.top1, top5=result.top5,
                    best_C=result.best_C, n_train=result.n_train + result.n_val, n_test=result.n_test,
                    extracted=cached.extracted, extract_seconds=round(cached.extract_seconds, 3),
                    probe_seconds=round(result.seconds, 3), store=str(cached.store))
                rows.append(row)
                echo(f"[{len(rows)}/{total}] {dataset.name} {model} {asked}: {dataset.metric} {row.score:.1%} "
                     f"({'extracted' if cached.extracted else 'cached features'}, probe {result.seconds:.1f} s)")
                record = {"row": asdict(row), "config": asdict(cfg), "dataset": asdict(dataset),
                          "store_settings": store.settings.to_json(), "test_split": data.test.name,
                          "probe_result": result.to_dict(), "versions": versions,
                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
                path = runs_dir / f"{dataset.name}__{model}__{asked}__{cfg.probe}.json"
                write_json(path, record, default=_jsonable)
                runs.append(path)
    return BenchReport(rows, runs, time.perf_counter() - start)
