"""--decoder tensor and nvjpeg: the same files refused for the same reasons, the same pixels where the decoder is
the same library, crops within rounding of the pil decoder, and features a probe cannot tell apart.

The GPU decoder's logic (batches, per-file fallback, orientation, merging in input order) runs here on the CPU
through TorchCodec's CPU decode; ``test_gpu_decoders.py`` runs it with nvJPEG on a CUDA GPU.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import write_bad_corpus, write_odd_but_good_corpus
from helpers import decoder_agreement, write_images
from PIL import Image

import featkit
from featkit.backbones.spec import Preprocess
from featkit.data.decode import DecodeError, decode_bytes, decode_image, probe_image, read_image_bytes
from featkit.data.jpeg import is_whole as jpeg_is_whole
from featkit.data.loader import CropDataset, collate
from featkit.data.nvjpeg import EncodedJpeg, GpuJpegDecoder, gpu_decodes, merge_decoded
from featkit.data.tensor_decode import decode_tensor, decode_tensor_file, load_crop_tensor
from featkit.data.transforms import load_crop
from featkit.errors import ParameterError, StoreError

PRE = Preprocess(resize=40, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear")


def photo(width: int = 120, height: int = 90, seed: int = 0, **save) -> bytes:
    """A JPEG like a photo: smooth colour plus noise."""
    rng = np.random.default_rng(seed)
    low = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(low, dtype=np.float32) + 12 * rng.standard_normal((height, width, 3), dtype=np.float32)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def reason(decoder: str, paths: list[str]) -> list[str]:
    ds = CropDataset(paths, range(len(paths)), PRE, True, decoder=decoder)
    return [item[3][0] if item[3] else "ok" for item in (ds[i] for i in range(len(paths)))]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    expected = write_bad_corpus(folder)
    return folder, expected


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_but_good_corpus(folder)


@pytest.mark.parametrize("decoder", ["tensor", "nvjpeg"])
def test_every_bad_file_is_refused_for_the_reason_the_pil_decoder_gives(bad, decoder):
    folder, expected = bad
    names = sorted(expected)
    paths = [os.path.join(folder, n) for n in names]
    pil = reason("pil", paths)
    assert pil == [expected[n] for n in names]  # the corpus' own promise, so the comparison below means something
    assert dict(zip(names, reason(decoder, paths), strict=True)) == dict(zip(names, pil, strict=True))


def test_odd_modes_orientations_and_frames_decode_to_the_pil_decoders_pixels_exactly(odd):
    folder, described = odd
    for name in described:
        path = os.path.join(folder, name)
        want = np.asarray(decode_image(path))
        got = decode_tensor(read_image_bytes(path)).permute(1, 2, 0).numpy()
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), name


def test_xmp_orientation_is_applied_where_libjpeg_reads_only_exif():
    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:10, :15] = (255, 0, 0)
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes ROTATE_90
    out = io.BytesIO()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    stored.save(out, "JPEG", quality=95, subsampling=0, xmp=xmp)
    data = out.getvalue()
    header = probe_image(data)
    assert (header.orientation, header.orientation_in_exif) == (6, False)
    want = np.asarray(decode_bytes(data))
    got = decode_tensor(data).permute(1, 2, 0).numpy()
    assert got.shape == want.shape == (20, 30, 3)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_an_xmp_segment_before_the_exif_one_does_not_change_the_orientation(orientation):
    """libjpeg-based decoders read the orientation from the first APP1 segment; Pillow from the first EXIF one."""
    upright = np.zeros((20, 30, 3), np.uint8)
    upright[:10, :15] = (255, 0, 0)
    undo = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
            7: "TRANSVERSE", 8: "ROTATE_270"}
    stored = Image.fromarray(upright).transpose(getattr(Image.Transpose, undo[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
    plain = out.getvalue()
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    data = plain[:2] + b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp + plain[2:]
    for jpeg in (plain, data):
        want = np.asarray(decode_bytes(jpeg))
        assert want.shape == (20, 30, 3)
        assert np.array_equal(decode_tensor(jpeg).permute(1, 2, 0).numpy(), want)


def test_only_the_header_of_a_file_the_tensor_decoder_refuses_is_read():
    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            data = super().read(size)
            Counting.read_bytes += len(data)
            return data

    header = bytearray(photo(width=64, height=48))
    sof = header.index(b"\xff\xc0")
    header[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")
    big = Counting(bytes(header) + bytes(30 * 2**20))  # 30 MB behind a header declaring 3.6 G pixels
    with pytest.raises(DecodeError) as info:
        decode_tensor_file(big, name="big.jpg")
    assert info.value.reason == "too_many_pixels" and Counting.read_bytes < 2**20


def test_crops_are_within_rounding_of_the_pil_decoders(tmp_path):
    crops = {"pil": [], "tensor": []}
    for seed in range(12):
        data = photo(width=100 + 7 * seed, height=70 + 5 * seed, seed=seed)
        crops["pil"].append(load_crop(data, PRE)[0])
        crops["tensor"].append(load_crop_tensor(data, PRE)[0])
    diff = (torch.stack(crops["pil"]).float() - torch.stack(crops["tensor"]).float()).abs()
    assert diff.max() <= 2  # same libjpeg; PIL's and torch's antialiased resize round differently
    assert diff.mean() < 0.05


def test_large_jpegs_are_draft_decoded_to_the_same_size_as_with_pil():
    data = photo(width=400, height=300)  # both sides ≥ 2 × 40 + ... : libjpeg decodes at 1/4 scale
    _, pil_size = load_crop(data, PRE)
    crop, size = load_crop_tensor(data, PRE)
    assert size == pil_size == (100, 75)
    assert load_crop_tensor(data, PRE, draft=False)[1] == (400, 300)
    assert crop.shape == (3, 32, 32)


def test_a_jpeg_declaring_too_many_pixels_is_refused_from_its_header():
    data = bytearray(photo(width=64, height=48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") + (60000).to_bytes(2, "big")  # 3.6 G pixels
    for load in (load_crop, load_crop_tensor):
        with pytest.raises(DecodeError) as info:
            load(bytes(data), PRE)
        assert info.value.reason == "too_many_pixels"


def test_damaged_jpegs_get_the_same_verdict_from_both_decoders():
    rng = np.random.default_rng(7)
    base = photo(width=96, height=64, seed=3)
    cases = [base[:int(n)] for n in rng.integers(2, len(base), 60)]
    for _ in range(140):
        data = bytearray(base)
        for at in rng.integers(0, len(base), int(rng.integers(1, 4))):
            data[at] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(data))

    def verdict(load, data):
        try:
            load(data, PRE)
            return "ok"
        except DecodeError as exc:
            return exc.reason

    verdicts = [(verdict(load_crop, c), verdict(load_crop_tensor, c)) for c in cases]
    assert [p for p, _ in verdicts].count("ok") < len(cases)  # the damage is real: some files are refused
    assert [p for p, _ in verdicts] == [t for _, t in verdicts]


def test_jpeg_is_whole_finds_the_end_of_the_scan_not_of_an_embedded_thumbnail():
    thumb = photo(width=16, height=16, seed=1)
    exif = Image.Exif()
    exif[0x0112] = 1
    main = photo(width=200, height=150, seed=2, exif=exif.tobytes())
    # an APP1 segment holding a whole JPEG (a thumbnail's FF D9 inside it), right after SOI
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    with_thumb = main[:2] + app1 + main[2:]
    assert jpeg_is_whole(main) and jpeg_is_whole(with_thumb) and jpeg_is_whole(main + b"junk")
    scan = with_thumb.index(b"\xff\xda", len(app1))
    for end in (3, len(app1) + 1, scan + 2, scan + 40, len(with_thumb) - 2):
        assert not jpeg_is_whole(with_thumb[:end]), end
    assert not jpeg_is_whole(b"\x89PNG\r\n\x1a\n")


def test_which_files_the_gpu_takes():
    plain, progressive = photo(), photo(progressive=True)
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 30), (0, 255, 0, 0)).save(cmyk, "JPEG")
    png = io.BytesIO()
    Image.new("RGB", (40, 30)).save(png, "PNG")
    assert gpu_decodes(probe_image(plain), plain)
    assert gpu_decodes(probe_image(photo(width=900, height=700)), photo(width=900, height=700))  # full size
    assert not gpu_decodes(probe_image(progressive), progressive)
    assert not gpu_decodes(probe_image(cmyk.getvalue()), cmyk.getvalue())
    assert not gpu_decodes(probe_image(png.getvalue()), png.getvalue())
    assert not gpu_decodes(probe_image(plain), plain[:-2])


def test_the_gpu_decoders_chunks_keep_input_order_and_fall_back_file_by_file(odd, monkeypatch):
    """The nvjpeg path's logic with TorchCodec's CPU decode standing in for nvJPEG."""
    folder, described = odd
    names = sorted(n for n in described if n.endswith((".jpg", ".png")))
    paths = [os.path.join(folder, n) for n in names]
    ds = CropDataset(paths, range(len(paths)), PRE, True, decoder="nvjpeg")
    chunk = collate([ds[i] for i in range(len(paths))], PRE.crop)
    gpu_names = {os.path.basename(e.name) for e in chunk.encoded}
    assert {"gray.jpg", "orient_6.jpg", "jpeg_named.png"} <= gpu_names
    assert not gpu_names & {"cmyk.jpg", "progressive.jpg", "png_named.jpg", "rgba.png"}

    decoder = GpuJpegDecoder(torch.device("cpu"), PRE)
    calls = []
    real = decoder.decoders.decode_jpeg

    def flaky(source, **kw):  # the batch fails, and so does one file on its own
        if "device" not in kw:  # the CPU decoder's own call (the module is TorchCodec's, shared)
            return real(source, **kw)
        calls.append(len(source) if isinstance(source, list) else 1)
        if isinstance(source, list) or source is chunk.encoded[0].data:
            raise RuntimeError("nvjpeg said no")
        return real(source, **kw)

    monkeypatch.setattr(decoder.decoders, "decode_jpeg", flaky)
    merged = merge_decoded(chunk, decoder.decode(chunk.encoded), lambda t: t)
    assert calls[0] == len(chunk.encoded) and len(calls) == 1 + len(chunk.encoded)
    assert merged.positions == list(range(len(paths))) and not merged.failures and not merged.encoded
    want = torch.stack([load_crop_tensor(p, PRE)[0] for p in paths])
    assert torch.equal(merged.pixels, want)  # the refused file was decoded by the CPU decoder, the rest alike
    assert merged.sizes == [load_crop_tensor(p, PRE)[1] for p in paths]


def test_a_file_the_gpu_and_the_cpu_refuse_is_recorded_with_the_cpu_decoders_reason(monkeypatch):
    good, cut = photo(seed=1), photo(seed=2)
    items = [EncodedJpeg(0, good, probe_image(good), "good.jpg"),
             EncodedJpeg(1, cut[:len(cut) // 2], probe_image(cut), "cut.jpg")]
    positions, crops, sizes, failures = GpuJpegDecoder(torch.device("cpu"), PRE).decode(items)
    assert positions == [0] and crops.shape == (1, 3, 32, 32) and sizes == [(120, 90)]
    assert [(p, r) for p, r, _ in failures] == [(1, "truncated")]
    assert "cut.jpg" in failures[0][2]


def test_a_store_records_its_decoder_and_never_mixes_two(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=3)
    out = tmp_path / "feats"
    common = dict(model="alexnet", weights="random", layers=["fc7"], batch_size=4)
    first = featkit.extract(images, out, decoder="tensor", **common)
    assert featkit.open_features(out).settings.decoder == "tensor"
    assert json.loads((out / "manifest.json").read_text())["settings"]["decoder"] == "tensor"
    assert featkit.extract(images, out, decoder="tensor", **common).computed == 0
    with pytest.raises(StoreError, match="decoder: tensor → pil"):
        featkit.extract(images, out, decoder="pil", **common)
    assert first.computed == 6
    pil = tmp_path / "pil"
    featkit.extract(images, pil, **common)
    settings = json.loads((pil / "manifest.json").read_text())["settings"]
    assert "decoder" not in settings and settings["schema"] == 1  # older stores keep their bytes and digests
    # a featkit that knows no decoders refuses a store that has one, rather than adding pil pixels to it
    assert json.loads((out / "manifest.json").read_text())["settings"]["schema"] == 2
    assert featkit.open_features(pil).settings.decoder == "pil"
    a, b = (np.asarray(featkit.open_features(p)["fc7"]) for p in (out, pil))
    assert np.allclose(a, b, rtol=0.05, atol=0.05)


def test_auto_picks_the_tensor_decoder_on_a_cpu_and_nvjpeg_needs_a_gpu(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=1)
    featkit.extract(images, tmp_path / "auto", model="alexnet", weights="random", device="cpu", decoder="auto")
    assert featkit.open_features(tmp_path / "auto").settings.decoder == "tensor"
    with pytest.raises(ParameterError, match="--decoder nvjpeg decodes on a CUDA GPU"):
        featkit.extract(images, tmp_path / "nv", model="alexnet", weights="random", device="cpu", decoder="nvjpeg")
    assert not (tmp_path / "nv").exists()
    with pytest.raises(ParameterError, match="decoder"):
        featkit.extract(images, tmp_path / "bad", model="alexnet", weights="random", decoder="turbo")


def test_one_decoder_for_all_the_devices_of_a_run():
    from featkit.extraction.embed import resolve_decoder

    assert resolve_decoder("auto", ["cuda", "cuda"]) == "nvjpeg"
    assert resolve_decoder("auto", ["cuda", "cpu"]) == resolve_decoder("auto", ["cpu"]) == "tensor"
    assert resolve_decoder("pil", ["cuda"]) == "pil"
    with pytest.raises(ParameterError, match="computes on cpu, cuda"):
        resolve_decoder("nvjpeg", ["cuda", "cpu"])


@pytest.mark.slow
def test_worker_processes_record_and_use_the_decoder_the_run_resolved(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=4)
    opts = dict(model="alexnet", weights="random", layers=["fc7"], device="cpu", shard_rows=2, decoder="auto")
    featkit.extract(images, tmp_path / "procs", procs=2, **opts)
    featkit.extract(images, tmp_path / "one", **opts)
    procs, one = featkit.open_features(tmp_path / "procs"), featkit.open_features(tmp_path / "one")
    assert procs.settings.decoder == one.settings.decoder == "tensor"
    assert featkit.extract(images, tmp_path / "procs", **opts).computed == 0  # the same settings: nothing to redo
    assert np.allclose(np.asarray(procs["fc7"]), np.asarray(one["fc7"]), atol=1e-5)


def test_a_manifest_naming_auto_or_an_unknown_decoder_is_damaged(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=1)
    featkit.extract(images, tmp_path / "s", model="alexnet", weights="random", decoder="tensor")
    manifest = tmp_path / "s" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["settings"]["decoder"] = "auto"
    manifest.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="settings.decoder must be one of pil, tensor, nvjpeg"):
        featkit.open_features(tmp_path / "s")


def test_embed_with_the_tensor_decoder_equals_the_store_for_paths_bytes_and_pil_images(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=2)
    featkit.extract(images, tmp_path / "s", model="alexnet", weights="random", layers=["pool5"], pool="avg",
                    decoder="tensor", batch_size=2)
    store = featkit.open_features(tmp_path / "s")
    paths = store.rows["path"].tolist()
    stored = np.asarray(store["pool5"])
    opts = dict(model="alexnet", weights="random", layers="pool5", pool="avg", decoder="tensor", batch_size=2)
    by_path = featkit.embed(paths, **opts)["pool5"]
    by_bytes = featkit.embed([Path(p).read_bytes() for p in paths], **opts)["pool5"]
    assert np.array_equal(by_path, stored) and np.array_equal(by_bytes, stored)
    pil = featkit.embed([Image.open(p) for p in paths], **opts)["pool5"]
    assert np.allclose(pil, stored, atol=1e-2)  # a PIL image is taken as it is: no draft decoding


def test_cli_decoder_option_and_its_one_line_error(tmp_path):
    images = write_images(tmp_path / "imgs", per_class=1)
    base = [sys.executable, "-m", "featkit", "extract", str(images), "--model", "alexnet", "--weights", "random",
            "--quiet"]
    ok = subprocess.run([*base, "-o", str(tmp_path / "s"), "--decoder", "tensor"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert featkit.open_features(tmp_path / "s").settings.decoder == "tensor"
    bad = subprocess.run([*base, "-o", str(tmp_path / "g"), "--decoder", "nvjpeg", "--device", "cpu"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    lines = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--decoder nvjpeg" in lines[0] and "Traceback" not in bad.stderr


def test_features_agree_with_the_pil_decoder_on_real_photos(shared_weights, hymenoptera, tmp_path):
    """The issue's bar: median cosine ≥ 0.99 and the linear probe within one point, real weights and photos."""
    cosine, top1 = decoder_agreement(hymenoptera, shared_weights, "tensor", tmp_path)
    assert np.median(cosine) >= 0.99 and cosine.min() > 0.95
    assert abs(top1["pil"] - top1["tensor"]) <= 0.01 + 1e-9
    assert top1["pil"] > 0.8  # real features: the comparison is between two good probes


def test_an_index_of_an_nvjpeg_store_is_searched_by_image_on_a_cpu_with_the_tensor_decoder(tmp_path, monkeypatch):
    """Its CPU twin: nvJPEG needs a GPU, and query images must still be embedded (here: the store is made with the
    GPU decoder's code running on TorchCodec's CPU decode, as a GPU machine would, then searched on a CPU)."""
    import featkit.extraction.embed as embed
    import featkit.extraction.run as run
    from featkit.index import Index

    images = write_images(tmp_path / "imgs", per_class=4, size=(96, 80), fmt="jpg")
    real = embed.resolve_decoder
    monkeypatch.setattr(run, "resolve_decoder", lambda decoder, devices: "nvjpeg")
    monkeypatch.setattr(embed, "resolve_decoder", lambda decoder, devices: "nvjpeg")
    featkit.extract(images, tmp_path / "s", model="alexnet", weights="random", layers=["pool5"], pool="avg",
                    device="cpu", batch_size=4)
    monkeypatch.setattr(embed, "resolve_decoder", real)
    assert featkit.open_features(tmp_path / "s").settings.decoder == "nvjpeg"
    from typer.testing import CliRunner

    from featkit.cli.app import app

    built = CliRunner().invoke(app, ["index", "build", str(tmp_path / "s"), "-o", str(tmp_path / "i"), "-q"])
    assert built.exit_code == 0, built.output
    index = Index.open(tmp_path / "i")
    query = sorted(images.rglob("*.jpg"))[0]
    hits = index.search([str(query)], k=1, device="cpu")
    assert index.embedder(device="cpu").decoder == "tensor"
    assert Path(hits["path"].iloc[0]).name == query.name  # the image finds itself


@pytest.mark.parametrize("decoder", ["pil", "tensor"])
def test_an_image_too_long_for_its_resize_becomes_a_row_without_the_huge_resize(tmp_path, decoder):
    # 1 x 40000 passes the stored-pixel guard; resized to 256 on its short side first it would be 2.6 Gpixels (7.8 GB)
    Image.new("RGB", (1, 40_000), (10, 200, 30)).save(tmp_path / "long.png")
    Image.new("RGB", (40_000, 2), (200, 100, 50)).save(tmp_path / "wide.jpg", quality=95)
    files = [str(tmp_path / n) for n in ("long.png", "wide.jpg")]
    opts = dict(model="squeezenet1_1", weights="random", layers="fire9", pool="avg", decoder=decoder, device="cpu")
    embedded = featkit.embed(files + [(tmp_path / "long.png").read_bytes()], **opts)
    assert embedded.names == [*files, "<image 2>"] and embedded.failures.empty
    same = featkit.embed([Image.new("RGB", (224, 224), (10, 200, 30))], **opts)["fire9"][0]
    np.testing.assert_allclose(embedded["fire9"][0], same, rtol=1e-4, atol=1e-4)  # one colour in, that colour out


def test_crop_first_matches_resize_then_crop_where_both_can_run():
    from featkit.backbones.spec import Preprocess
    from featkit.data.tensor_decode import _crop_first, pil_to_chw, resize_crop
    from featkit.data.transforms import crop_first, crop_image

    rng = np.random.default_rng(0)
    pre = Preprocess(resize=256, crop=224)
    for size in ((40, 3000), (3000, 37), (500, 375)):
        smooth = np.cumsum(rng.integers(-3, 4, (size[1], size[0], 3)), axis=0) % 256
        image = Image.fromarray(smooth.astype(np.uint8))
        standard = crop_image(image, pre).numpy().astype(int)  # affordable at these sizes
        first = np.asarray(crop_first(image, pre)).transpose(2, 0, 1).astype(int)
        assert first.shape == standard.shape == (3, 224, 224)
        assert np.abs(first - standard).mean() < 1.0 and np.abs(first - standard).max() <= 12, size
        tensor_first = _crop_first(pil_to_chw(image), pre).numpy().astype(int)
        assert np.array_equal(tensor_first, first)
        assert np.abs(resize_crop(pil_to_chw(image), pre).numpy().astype(int) - standard).mean() < 1.0
