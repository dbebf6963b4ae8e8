"""--decoder nvjpeg on a CUDA GPU: the same rows, failures and orientation as the CPU decoders, features that agree,
and GPU memory that stays flat over many batches.

Skipped without CUDA (CI has none); the decoder's CPU-side logic is tested in ``test_decoders.py``.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch
from corpus import UPRIGHT_QUADRANTS, write_bad_corpus, write_odd_but_good_corpus
from helpers import decoder_agreement
from PIL import Image

import featkit
from featkit._device import HostStaging, resolve_runtime
from featkit.backbones.spec import Preprocess
from featkit.data.decode import probe_image
from featkit.data.loader import CropDataset, collate
from featkit.data.nvjpeg import EncodedJpeg, GpuJpegDecoder, merge_decoded
from featkit.data.tensor_decode import load_crop_tensor
from featkit.extraction.embed import resolve_decoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")

PRE = Preprocess(resize=40, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear")


def photo(path, width, height, seed, **save):
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(low, dtype=np.float32) + 12 * rng.standard_normal((height, width, 3), dtype=np.float32)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90, **save)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Photos of many sizes (some over twice the resize size, one progressive), odd files and bad files."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(40):
        photo(root / f"photo_{i:02d}.jpg", 200 + 37 * i, 150 + 23 * i, i, progressive=(i == 7))
    write_odd_but_good_corpus(root / "odd")
    bad = write_bad_corpus(root / "bad")
    return root, bad


def to_cuda(tensor):
    return tensor.to("cuda")


def test_host_staging_copies_through_reused_pinned_buffers():
    staging = HostStaging(torch.device("cuda"), slots=2)
    chunks = [torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
              for n in (4, 4, 9, 2, 4)]
    out = [staging.to_device(c) for c in chunks]
    for c, o in zip(chunks, out, strict=True):
        assert o.is_cuda and torch.equal(o.cpu(), c) and o.is_contiguous(memory_format=torch.channels_last)
    assert sum(b is not None for b in staging.buffers) == 2 and all(b.is_pinned() for b in staging.buffers)
    on_gpu = out[0]
    assert staging.to_device(on_gpu) is on_gpu  # the GPU decoder's crops are not sent through the host


def test_auto_is_nvjpeg_on_cuda():
    assert resolve_decoder("auto", [resolve_runtime("cuda").device.type]) == "nvjpeg"


def test_nvjpeg_store_has_the_rows_and_failures_of_the_tensor_decoder_and_agreeing_features(mixed, tmp_path):
    root, bad = mixed
    opts = dict(model="resnet18", weights="random", layers=["avgpool"], batch_size=16, device="cuda")
    stores = {}
    for decoder in ("tensor", "nvjpeg"):
        featkit.extract(root, tmp_path / decoder, decoder=decoder, layout="flat", **opts)
        stores[decoder] = featkit.open_features(tmp_path / decoder)
    t, g = stores["tensor"], stores["nvjpeg"]
    assert g.settings.decoder == "nvjpeg"
    assert g.rows["path"].tolist() == t.rows["path"].tolist()
    fails = {d: dict(zip(s.failures["path"].map(os.path.basename), s.failures["reason"], strict=True))
             for d, s in stores.items()}
    assert fails["nvjpeg"] == fails["tensor"]  # and test_decoders.py holds the tensor decoder to the corpus
    a, b = (np.asarray(s["avgpool"], dtype=np.float64) for s in (t, g))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert np.median(cosine) >= 0.99 and cosine.min() > 0.9


def test_orientations_come_out_upright_on_the_gpu(tmp_path):
    described = write_odd_but_good_corpus(tmp_path)
    names = sorted(n for n in described if n.startswith("orient_") and n.endswith(".jpg"))
    paths = [str(tmp_path / n) for n in names]
    pre = Preprocess(resize=32, crop=32, mean=(0,) * 3, std=(1,) * 3, interpolation="bilinear")
    ds = CropDataset(paths, range(len(paths)), pre, True, decoder="nvjpeg")
    chunk = collate([ds[i] for i in range(len(paths))], pre.crop)
    assert len(chunk.encoded) == len(paths)
    merged = merge_decoded(chunk, GpuJpegDecoder(torch.device("cuda"), pre).decode(chunk.encoded), to_cuda)
    crops = merged.pixels.cpu()
    for name, crop in zip(names, crops, strict=True):
        h, w = crop.shape[1:]
        corners = {"tl": crop[:, h // 4, w // 4 + 4], "tr": crop[:, h // 4, -w // 4 - 4],
                   "bl": crop[:, -h // 4, w // 4 + 4], "br": crop[:, -h // 4, -w // 4 - 4]}
        for corner, colour in UPRIGHT_QUADRANTS.items():
            assert (corners[corner].int() - torch.tensor(colour)).abs().max() < 40, (name, corner)
        cpu = load_crop_tensor(paths[names.index(name)], pre)[0]
        assert (cpu.int() - crop.int()).abs().float().mean() < 3, name


def test_gpu_crops_are_close_to_the_cpu_decoders(mixed):
    root, _ = mixed
    paths = sorted(str(p) for p in root.glob("photo_*.jpg"))
    pre = Preprocess(resize=256, crop=224, mean=(0,) * 3, std=(1,) * 3, interpolation="bilinear")
    ds = CropDataset(paths, range(len(paths)), pre, False, decoder="nvjpeg")
    chunk = collate([ds[i] for i in range(len(paths))], pre.crop)
    merged = merge_decoded(chunk, GpuJpegDecoder(torch.device("cuda"), pre, draft=False).decode(chunk.encoded),
                           to_cuda)
    cpu = torch.stack([load_crop_tensor(p, pre, draft=False)[0] for p in paths])
    diff = (merged.pixels.cpu().float() - cpu.float()).abs()
    assert diff.mean() < 1.5 and diff.max() < 64  # nvJPEG's IDCT and upsampling, the GPU's float resize


def test_gpu_memory_stays_flat_over_many_batches():
    data = []
    for i in range(32):
        out = io.BytesIO()
        photo(out, 640 + 8 * i, 480, i)
        data.append(out.getvalue())
    items = [EncodedJpeg(i, d, probe_image(d), f"<{i}>") for i, d in enumerate(data)]
    pre = Preprocess(resize=256, crop=224, mean=(0,) * 3, std=(1,) * 3, interpolation="bilinear")
    decoder = GpuJpegDecoder(torch.device("cuda"), pre)
    seen = []
    for _ in range(60):
        positions, crops, _, failures = decoder.decode(items)
        assert positions == list(range(32)) and not failures
        del crops
        torch.cuda.synchronize()
        seen.append((torch.cuda.memory_allocated(), torch.cuda.memory_reserved()))
    assert seen[-1][0] <= seen[5][0] + 2**20, seen[::10]
    assert seen[-1][1] <= seen[5][1] + 64 * 2**20, seen[::10]


def test_nvjpeg_agrees_with_pil_on_real_photos(shared_weights, hymenoptera, tmp_path):
    cosine, top1 = decoder_agreement(hymenoptera, shared_weights, "nvjpeg", tmp_path, device="cuda")
    print(f"nvjpeg vs pil: median cosine {np.median(cosine):.5f}, min {cosine.min():.5f}; probe top-1 {top1}")
    assert np.median(cosine) >= 0.99
    assert abs(top1["pil"] - top1["nvjpeg"]) <= 0.01 + 1e-9
