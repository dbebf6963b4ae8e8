"""Every closed set of choices a user can name, declared once.

The library validates its arguments against these enums and the CLI offers them as ``--option`` choices. They
live together in one module that imports nothing heavy, so that ``featkit --help`` can list them without
loading torch, FAISS or scikit-learn. Each is a ``StrEnum``: its members compare equal to their plain strings,
so library functions take either.
"""

from __future__ import annotations

from enum import StrEnum


class Pool(StrEnum):
    """How a tap becomes a vector: ``none`` flattens it; the others reduce a map's positions or a ViT's tokens.

    ``avg``, ``max`` and ``gem`` (generalised mean, p = 3, of values clamped positive) reduce the H×W positions of
    a map (C×H×W, or Swin's H×W×C) or the tokens of a token tap (T×D, the class token included), leaving C or D
    values. ``mean`` is ``avg`` under the name transformer users know. ``cls`` takes a token tap's class token
    (token 0); maps have none, so it is an error there. Vectors (fc7, logits) are stored as they are.
    """

    none = "none"
    avg = "avg"
    max = "max"
    gem = "gem"
    cls = "cls"
    mean = "mean"


class DType(StrEnum):
    """The dtype features are stored in."""

    float32 = "float32"
    float16 = "float16"


class Precision(StrEnum):
    """The precision a forward pass computes in (autocast)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Engine(StrEnum):
    """What runs an extraction's partitions.

    ``local``: this process, or ``--procs`` processes on this machine. ``ray``: an actor pool on a Ray cluster (see
    :mod:`featkit.extraction.ray_engine`).
    """

    local = "local"
    ray = "ray"


class Decoder(StrEnum):
    """What turns image files into pixels (see ``featkit extract --decoder``).

    ``pil``: Pillow decodes and resizes. ``tensor``: JPEGs are decoded by libjpeg-turbo (TorchCodec) into uint8
    tensors and every image is resized and cropped as tensor ops. ``nvjpeg``: JPEGs are decoded in batches on the
    GPU (nvJPEG) and resized there; other files take the ``tensor`` path. ``auto``: ``nvjpeg`` on CUDA, else
    ``tensor``. Pixels differ a little between them, so a store records which one made it.
    """

    pil = "pil"
    tensor = "tensor"
    nvjpeg = "nvjpeg"
    auto = "auto"


class Layout(StrEnum):
    """How a folder's subfolders give labels and splits."""

    auto = "auto"
    splits = "splits"
    classes = "classes"
    flat = "flat"


class WeightsKind(StrEnum):
    """Where a backbone's weights come from."""

    imagenet = "imagenet"
    random = "random"
    file = "file"


class IndexKind(StrEnum):
    """The FAISS index a similar-image index is built as (``auto`` chooses by size and memory)."""

    auto = "auto"
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"
    ivfpq = "ivfpq"


class SearchMetric(StrEnum):
    """How a similar-image index measures closeness."""

    cosine = "cosine"
    l2 = "l2"


class ProbeKind(StrEnum):
    """The probe of feature quality."""

    linear = "linear"
    knn = "knn"


class SelectionMetric(StrEnum):
    """What chooses a linear probe's C on validation data (and what a benchmark reports)."""

    accuracy = "accuracy"
    mean_per_class = "mean_per_class"


class InspectDepth(StrEnum):
    """How finely ``featkit inspect`` lists a network."""

    layer = "layer"
    block = "block"
    stage = "stage"


class ActivationDType(StrEnum):
    """Bytes per activation value in ``featkit inspect``'s memory columns."""

    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class TableFormat(StrEnum):
    """How a table is printed."""

    table = "table"
    csv = "csv"
    markdown = "markdown"
    json = "json"


def values(choices: type[StrEnum]) -> tuple[str, ...]:
    """The plain strings of an enum, in declaration order."""
    return tuple(member.value for member in choices)
