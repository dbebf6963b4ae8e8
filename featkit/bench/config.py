"""The settings of one benchmark, built once at the edge (CLI flags or Python keywords)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from featkit.choices import Pool, Precision, ProbeKind
from featkit.errors import FeatkitError, check_choice, check_int, invalid_parameter


def parse_grid(text: str) -> tuple[float, ...]:
    """``LOW:HIGH:N`` (N log-spaced values) or a comma-separated list of C values."""
    import numpy as np

    try:
        if ":" in text:
            low, high, n = text.split(":")
            return tuple(float(c) for c in np.logspace(np.log10(float(low)), np.log10(float(high)), int(n)))
        return tuple(float(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise invalid_parameter("grid", "bench", "LOW:HIGH:N (e.g. 1e-6:1e5:45) or C values separated by commas",
                                text) from None


CACHE_ENV = "FEATKIT_CACHE"


def default_cache() -> Path:
    """Where bench keeps feature stores between runs: ``$FEATKIT_CACHE`` or ``~/.cache/featkit/features``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "featkit" / "features").expanduser()


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark and how.

    Attributes:
        models: backbone names.
        taps: tap names or aliases; each model is probed on those of them it has.
        datasets: data card names (``featkit data list``) or ImageFolder paths with train/[val/]test folders.
        output: folder for results.csv, results.md, runs/*.json and the plot.
        weights: ``imagenet``, ``random`` or a weights file, for every model; or per model,
            ``resnet50=FILE,vgg16=imagenet`` (models left out take ``imagenet``).
        pool: how spatial taps become vectors (``avg`` keeps conv taps comparable with fc taps).
        probe: ``linear`` (the Kornblith et al. protocol) or ``knn`` (cosine, temperature-weighted votes).
        per_class: render/keep only this many images per class and split (smoke runs; not benchmark numbers), for
            data cards and your own folders alike.
        limit: only the first N images of each dataset, in listing order (a smoke run).
        data_root: where datasets are prepared (None: ``featkit data prepare``'s default).
        cache: where feature stores are kept and looked up (None: :func:`default_cache`).
        seed: seed of the validation split (and of ``--weights random``).
        grid: the linear probe's C values, ascending (default: the protocol's 45 log-spaced values, 1e-6 to 1e5).
        k, temperature: the kNN probe's neighbours and vote temperature.
        batch_size, device, precision: passed to the extractor.
        download: allow downloading datasets and ImageNet weights.
    """

    models: tuple[str, ...]
    taps: tuple[str, ...]
    datasets: tuple[str, ...]
    output: Path
    weights: str = "imagenet"
    pool: str = "avg"
    probe: str = "linear"
    per_class: int | None = None
    limit: int | None = None
    data_root: Path | None = None
    cache: Path | None = None
    seed: int = 0
    grid: tuple[float, ...] = ()
    k: int = 20
    temperature: float = 0.07
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    download: bool = True

    def __post_init__(self) -> None:
        for name in ("models", "taps", "datasets"):
            if not getattr(self, name):
                raise FeatkitError(f"Give at least one of --{name} (comma-separated).")
        object.__setattr__(self, "probe", check_choice("probe", self.probe, ProbeKind, "bench"))
        object.__setattr__(self, "pool", check_choice("pool", self.pool, Pool, "bench"))
        object.__setattr__(self, "precision", check_choice("precision", self.precision, Precision, "bench"))
        if any(not 0 < c < float("inf") for c in self.grid):
            raise invalid_parameter("grid", "bench", "finite numbers > 0", list(self.grid))
        if self.per_class is not None:
            check_int("per_class", self.per_class, "bench (train and test need images)", minimum=2)
        if self.limit is not None:
            check_int("limit", self.limit, "bench", minimum=2)
        weights = self.weights_by_model()
        unknown_models = sorted(set(weights) - set(self.models) - {""})
        if unknown_models:
            raise invalid_parameter("weights", "bench", f"MODEL=WEIGHTS for models of --models "
                                    f"({', '.join(self.models)})", self.weights)

    def weights_by_model(self) -> dict[str, str]:
        """``--weights`` as model → weights.

        One value for every model (under the key ""), or ``resnet50=FILE,vgg16=imagenet`` (models left out take
        ``imagenet``).
        """
        text = self.weights.strip()
        if "=" not in text:
            return {"": text}
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        return {model.strip(): value.strip() for model, value in pairs}

    def weights_for(self, model: str) -> str:
        """The weights ``model`` runs with in this benchmark."""
        by_model = self.weights_by_model()
        return by_model.get("") or by_model.get(model, "imagenet")

    @property
    def smoke(self) -> str:
        """What makes this run a smoke run ("" for a real benchmark)."""
        parts = ([f"at most {self.per_class} images per class per split"] if self.per_class else []) + (
            [f"the first {self.limit} images"] if self.limit else [])
        return " and ".join(parts)

    @property
    def c_grid(self) -> tuple[float, ...]:
        from featkit.probes.protocol import DEFAULT_GRID

        return tuple(sorted(self.grid)) or DEFAULT_GRID

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache).expanduser() if self.cache is not None else default_cache()
