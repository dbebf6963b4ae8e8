"""Small helpers the tests share: generated images and byte-level store comparison."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_images(root: Path, classes: int = 2, per_class: int = 4, size: tuple[int, int] = (48, 40), seed: int = 0,
                 fmt: str = "png") -> Path:
    """``root/c<k>/<i>.<fmt>``: smooth random colour fields (distinct per class) so features differ per image."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    for k in range(classes):
        folder = root / f"c{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            freq = rng.uniform(0.05, 0.3, size=3)
            phase = rng.uniform(0, 6.28, size=3)
            img = np.stack([127 + 120 * np.sin(freq[c] * (xx + k * 7) + phase[c] + yy * 0.1 * (c + 1))
                            for c in range(3)], -1)
            Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:03d}.{fmt}")
    return root


def store_bytes(root: Path) -> dict[str, bytes]:
    """Every committed data file of a store (the manifest carries timestamps, so it is compared separately)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[-2] != root.name}


def write_feature_store(root: Path, shards: tuple[int, ...] = (4, 4), dims: int = 8, tap: str = "feat") -> Path:
    """A feature store of random float32 vectors without a model: one shard of ``n`` rows per entry of ``shards``."""
    import pandas as pd

    from featkit.backbones.spec import Preprocess
    from featkit.store.settings import StoreSettings, TapRecord, WeightsRecord
    from featkit.store.writer import StoreWriter

    settings = StoreSettings("synthetic", WeightsRecord("random", "random(seed=0)", "0" * 64, 10, seed=0),
                             Preprocess(8, 8), (TapRecord(tap, tap),), pool="avg", l2=False, dtype="float32",
                             precision="fp32", draft=True, shard_rows=max(shards))
    rng = np.random.default_rng(0)
    with StoreWriter(root, settings) as writer:  # one segment (as one partition of a run writes it)
        segment = writer.open_segment(0, sum(shards), "0" * 64)
        first = 0
        for n in shards:
            meta = pd.DataFrame({"path": [f"/img/{i:04d}.jpg" for i in range(first, first + n)], "label": "a",
                                 "split": None, "width": 8, "height": 8, "bytes": 100, "mtime_ns": 1})
            first += n
            segment.commit_shard({tap: rng.standard_normal((n, dims)).astype(np.float32)}, meta,
                                 pd.DataFrame(columns=["path", "reason", "message", "bytes", "mtime_ns"]), first)
        segment.seal()
        writer.merge(segment.name)
    return root


def shard_dir(store: Path) -> Path:
    """Where a store made by :func:`write_feature_store` (or :func:`as_v1_store`) keeps its shards' files."""
    return store / "segments" / "seg-000000" if (store / "segments").is_dir() else store


def files_record(store: Path) -> Path:
    """The JSON file recording the shards' files of such a store: a v1 manifest, or the v2 segment's manifest."""
    return shard_dir(store) / "segment.json" if shard_dir(store) != store else store / "manifest.json"


def read_all(store: Path):
    """Open a store and read everything in it (rows, every tap, failures): what a damaged file must stop."""
    from featkit.store.reader import open_features

    opened = open_features(store)
    for tap in opened.taps:
        np.asarray(opened[tap])
    assert len(opened.rows) == len(opened) and opened.failures is not None
    return opened


def in_thread(fn, timeout: float = 20):
    """``fn()`` in a daemon thread, so a call that blocks (on a FIFO, say) fails the test instead of hanging it."""
    import threading

    result: list = []

    def run():
        try:
            result.append((fn(), None))
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread below
            result.append((None, e))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert result, f"still running after {timeout} s"
    value, error = result[0]
    if error is not None:
        raise error
    return value


def as_v1_store(v2: Path, v1: Path) -> Path:
    """The v2 store at ``v2`` rewritten at ``v1`` in format v1, as earlier featkit wrote it.

    One manifest listing every shard (with its files' sha256), files at the store's root, the store's row numbers
    in the metadata tables, retired rows and runs in the manifest.
    """
    import hashlib
    import json

    import pandas as pd

    from featkit.store import format as fmt
    from featkit.store import segments as sg

    manifest = json.loads((v2 / "manifest.json").read_text())
    log = sg.read_log(v2)
    table = sg.ShardTable.of_log(v2, log)
    shards = []
    for i, ref in enumerate(table):
        files = {}
        for tap in manifest["taps"]:
            files[fmt.feature_path(tap, i)] = ref.feature_file(tap).read_bytes()
        meta = pd.read_parquet(ref.metadata_file())
        meta["row"] = meta["row"] + (ref.first_row - ref.local_first)
        files[fmt.metadata_path(i)] = fmt.parquet_bytes(meta)
        files[fmt.failures_path(i)] = ref.failures_file().read_bytes()
        for rel, data in files.items():
            (v1 / rel).parent.mkdir(parents=True, exist_ok=True)
            (v1 / rel).write_bytes(data)
        shards.append({"index": i, "rows": ref.rows, "failures": ref.failures,
                       "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}})
    rows = int(table.total_rows) - len(log.retired)
    (v1 / "manifest.json").write_text(json.dumps({
        "format": "featkit-store", "version": 1, "created": manifest["created"], "taps": manifest["taps"],
        "rows": rows, "failures": int(table.failures.sum()), "shards": shards, "stale_rows": sorted(log.retired),
        "runs": log.runs, "settings": manifest["settings"]}, indent=1))
    return v1


def decoder_agreement(photos: Path, weights: Path, decoder: str, out: Path, device: str = "cpu"):
    """SqueezeNet ``fire9`` (avg-pooled, real weights) of ``photos`` with ``decoder`` and with ``pil``.

    Returns each photo's cosine between the two, and the linear probe's val top-1 for each: ``{pil, decoder}``.
    """
    import featkit
    from featkit.probes.protocol import run_linear_probe

    stores = {}
    for name in ("pil", decoder):
        featkit.extract(photos, out / name, model="squeezenet1_1", weights=str(weights), layers=["fire9"],
                        pool="avg", decoder=name, device=device)
        stores[name] = featkit.open_features(out / name)
    rows = stores["pil"].rows
    assert rows["path"].tolist() == stores[decoder].rows["path"].tolist()
    a, b = (np.asarray(stores[d]["fire9"], dtype=np.float64) for d in ("pil", decoder))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    train, val = (rows["split"] == "train").to_numpy(), (rows["split"] == "val").to_numpy()
    y = rows["label"].to_numpy()
    top1 = {d: run_linear_probe(x[train], y[train], x[val], y[val], seed=0).top1 for d, x in (("pil", a), (decoder, b))}
    return cosine, top1


def private_network(what: str) -> list[str]:
    """The command prefix that runs a command with loopback only (``unshare --net``, lo up), or a pytest skip
    saying why there is none. ``what`` names what it keeps on loopback (for the skip's reason)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip(f"needs unshare and ip (util-linux, iproute2) to keep {what} on loopback")
    probe = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace (unshare --net needs root): {probe.stderr.decode()}")
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def add_member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int = 1_700_000_000) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    tar.addfile(info, io.BytesIO(data))


def write_shards(images: Path, out: Path, per_shard: int = 5) -> list[tuple[str, bytes, str]]:
    """img2dataset's layout: ``out/0000K.tar`` of ``KEY.jpg|png`` + ``KEY.cls`` + ``KEY.json``, and its .parquet files.

    Returns:
        (member name, image bytes, class folder) per sample, in shard order.
    """
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in images.rglob("*") if p.is_file())
    samples = []
    for k in range(0, len(files), per_shard):
        with tarfile.open(out / f"{k // per_shard:05d}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for i, path in enumerate(files[k:k + per_shard]):
                key = f"{k // per_shard:05d}{i:04d}"
                data = path.read_bytes()
                add_member(tar, f"{key}{path.suffix}", data)
                add_member(tar, f"{key}.cls", path.parent.name.encode())
                add_member(tar, f"{key}.json", json.dumps({"caption": "a photo", "url": "https://example.com/x"}).encode())
                samples.append((f"{key}{path.suffix}", data, path.parent.name))
        (out / f"{k // per_shard:05d}.parquet").write_bytes(b"PAR1 stats of the shard")
    (out / "stats.json").write_text("{}")
    return samples
