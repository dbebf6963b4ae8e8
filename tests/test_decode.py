"""The decoder keeps RELIABILITY.md rows 6-11 and 23: bad files give a reason code, good files correct RGB."""

from __future__ import annotations

import errno
import functools
import io
import os
import pickle
import subprocess
import time
import warnings

import numpy as np
import pytest
from corpus import (
    BLACK,
    BLUE,
    GREEN,
    NON_UTF8_NAME,
    RED,
    UPRIGHT_QUADRANTS,
    UPRIGHT_SIZE,
    WHITE,
    bands,
    bomb_png,
    encode,
    write_bad_corpus,
    write_odd_but_good_corpus,
)
from helpers import in_thread
from PIL import EpsImagePlugin, Image, ImageFile, ImageOps

from featkit.data import decode as decode_module
from featkit.data.decode import (
    ALLOWED_FORMATS,
    ALPHA_BACKGROUND,
    DEFAULT_MAX_PIXELS,
    REASONS,
    DecodeError,
    decode_bytes,
    decode_image,
)
from featkit.errors import FeatkitError

CYAN = (0, 255, 255)


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, write_bad_corpus(folder)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    return folder, write_odd_but_good_corpus(folder)


def reason_of(call, *args, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        call(*args, **kwargs)
    return info.value.reason


def band(im: Image.Image, i: int) -> tuple[int, ...]:
    return im.getpixel((16 * i + 8, im.height // 2))


def close(got, want, tol: int) -> bool:
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


# --- bad files: a reason code, and only DecodeError ---------------------------------------------------


def test_bad_corpus_gives_each_file_its_reason(bad):
    folder, expected = bad
    assert len(expected) >= 40

    def decode_all():
        got = {}
        for name in expected:
            try:
                decode_image(folder / name)
                got[name] = "decoded"
            except DecodeError as e:
                got[name] = e.reason
                assert e.message == str(e) and "\n" not in e.message and name in e.message
        return got

    assert in_thread(decode_all) == expected


def test_bad_corpus_covers_every_reason_that_root_can_produce(bad):
    assert set(REASONS) - set(bad[1].values()) <= {"unreadable"}  # no permission denial as root


def test_fifo_is_refused_without_blocking(bad):
    folder, expected = bad
    if "fifo.jpg" not in expected:
        pytest.skip("no os.mkfifo here")
    assert in_thread(lambda: reason_of(decode_image, folder / "fifo.jpg"), timeout=5) == "not_a_file"


def test_path_swapped_for_a_fifo_after_stat_does_not_block(tmp_path, monkeypatch):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no os.mkfifo here")
    path = tmp_path / "x.jpg"
    path.write_bytes(encode(bands([RED]), "PNG"))
    real_open = os.open

    def swap_then_open(p, flags, *args):
        os.remove(p)
        os.mkfifo(p)
        return real_open(p, flags, *args)

    monkeypatch.setattr(decode_module.os, "open", swap_then_open)
    assert in_thread(lambda: reason_of(decode_image, path), timeout=5) == "not_a_file"


def test_file_deleted_between_listing_and_reading(tmp_path, monkeypatch):
    path = tmp_path / "gone.jpg"
    path.write_bytes(encode(bands([RED]), "JPEG"))
    listed = list(tmp_path.iterdir())
    path.unlink()
    assert reason_of(decode_image, listed[0]) == "not_found"

    path.write_bytes(encode(bands([RED]), "JPEG"))
    real_open = os.open
    monkeypatch.setattr(decode_module.os, "open", lambda p, *a: (os.remove(p), real_open(p, *a))[1])
    assert reason_of(decode_image, path) == "not_found"  # deleted after stat, before open


def test_permission_and_io_errors_are_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    path.write_bytes(encode(bands([RED, GREEN]), "PNG"))

    class FailingReader(io.BufferedReader):
        def read(self, size=-1):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(decode_module, "open", lambda fd, mode: FailingReader(io.FileIO(fd, "r")), raising=False)
    assert reason_of(decode_image, path) == "unreadable"
    monkeypatch.undo()

    def denied(*args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(decode_module.os, "open", denied)
    assert reason_of(decode_image, path) == "unreadable"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_file_without_read_permission_is_unreadable(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(encode(bands([RED]), "PNG"))
    path.chmod(0)
    assert reason_of(decode_image, path) == "unreadable"


def test_formats_outside_the_allow_list_never_run_ghostscript(bad, monkeypatch):
    folder, _ = bad

    def forbidden(*args, **kwargs):
        raise AssertionError("an external program was started")

    for target, attr in ((subprocess, "Popen"), (subprocess, "check_call"), (EpsImagePlugin, "Ghostscript")):
        monkeypatch.setattr(target, attr, forbidden)
    for name in ("eps.jpg", "postscript.png", "eps_binary_header.jpg", "document.jpg", "vector.jpg", "fits.jpg"):
        assert reason_of(decode_image, folder / name) == "format_not_allowed", name
    assert "EPS" not in ALLOWED_FORMATS and {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"} <= set(ALLOWED_FORMATS)


# --- decompression bombs -------------------------------------------------------------------------------


class PixelsAllocated(BaseException):
    """Raised past the decoder's ``except Exception`` when a big pixel buffer is allocated."""


def test_bomb_is_refused_from_the_header_without_allocating_pixels(bad, monkeypatch):
    folder, _ = bad
    real_new = Image.core.new

    def small_only(mode, size, *args):
        if size[0] * size[1] > 1_000_000:
            raise PixelsAllocated(f"{mode} {size}")
        return real_new(mode, size, *args)

    monkeypatch.setattr(Image.core, "new", small_only)
    start = time.perf_counter()
    for name in ("bomb_30000.png", "bomb_10000.png", "bomb_gif_screen.gif"):
        assert reason_of(decode_image, folder / name) == "too_many_pixels", name
    with pytest.raises(DecodeError, match="10000x10000 = 100000000 pixels is more than max_pixels=89478485"):
        decode_image(folder / "bomb_10000.png")
    # Above PIL's hard limit even a generous max_pixels is refused (by PIL's own check, still no pixels).
    assert reason_of(decode_image, folder / "bomb_30000.png", max_pixels=10**12) == "too_many_pixels"
    assert time.perf_counter() - start < 2
    with pytest.raises(PixelsAllocated):  # the guard works: a max_pixels that admits the bomb allocates
        decode_image(folder / "bomb_10000.png", max_pixels=10**9)


def test_max_pixels_is_ours_and_pil_global_state_is_untouched(bad):
    folder, _ = bad
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    data = encode(bands([RED, GREEN]), "PNG")  # 32x16 = 512 pixels
    assert decode_bytes(data, max_pixels=512).size == (32, 16)
    assert reason_of(decode_bytes, data, max_pixels=511) == "too_many_pixels"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reason_of(decode_image, folder / "bomb_10000.png") == "too_many_pixels"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert DEFAULT_MAX_PIXELS == 89_478_485


def test_bomb_png_is_small_and_valid():
    data = bomb_png(10000)
    assert len(data) < 20_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.size, im.mode) == ((10000, 10000), "1")


# --- odd but good images ------------------------------------------------------------------------------


def test_every_odd_but_good_file_decodes_to_loaded_rgb_without_metadata(good):
    folder, described = good
    for name in described:
        im = decode_image(os.path.join(os.fsencode(folder), os.fsencode(name)))
        assert im.mode == "RGB", name
        assert im.info == {}, name
        assert ImageOps.exif_transpose(im).tobytes() == im.tobytes(), f"{name}: orientation left to apply"
    assert len(described) >= 40


@pytest.mark.parametrize(
    ("name", "colors", "tol"),
    [
        ("gray16.png", [(255,) * 3, (128,) * 3, (0,) * 3], 0),  # scaled, not clipped to 255
        ("gray16.tif", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("gray16_big_endian.tif", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("gray16.pgm", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("int32.tif", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("float01.tif", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("float255.tif", [(255,) * 3, (128,) * 3, (0,) * 3], 0),
        ("rgb16.png", [(255, 128, 0)], 0),
        ("palette_transparent.png", [RED, ALPHA_BACKGROUND], 0),
        ("palette_transparent.gif", [RED, ALPHA_BACKGROUND], 0),
        ("rgba.png", [RED, ALPHA_BACKGROUND, (255, 127, 127)], 1),
        ("rgba.webp", [RED, ALPHA_BACKGROUND, (255, 127, 127)], 1),
        ("la.png", [BLACK, ALPHA_BACKGROUND], 0),
        ("rgb_color_key.png", [RED, ALPHA_BACKGROUND], 0),
        ("bilevel.png", [BLACK, WHITE], 0),
        ("bilevel_g4.tif", [BLACK, WHITE], 0),
        ("cmyk.tif", [WHITE, CYAN, BLACK], 0),
        ("cmyk.jpg", [WHITE, CYAN, BLACK], 12),
        ("gray.jpg", [(0,) * 3, (128,) * 3, (255,) * 3], 4),
        ("ycbcr.tif", [RED, GREEN], 8),
        ("lab.tif", [RED, GREEN], 16),
        ("progressive.jpg", [RED, GREEN, BLUE], 12),
        ("animated.gif", [RED, RED], 0),  # first frame
        ("animated.png", [RED, RED], 0),
        ("multipage.tif", [RED, RED], 0),
        ("multipicture.jpg", [RED, RED], 12),
        ("tiff_named.jpg", [RED, GREEN], 0),
        ("png_named.jpg", [RED, GREEN], 0),
        ("jpeg_named.png", [RED, GREEN], 12),
        ("lossy.webp", [RED, GREEN], 25),
        ("bottom_up.bmp", [RED, GREEN, BLUE], 0),
        ("rgb.ppm", [RED, GREEN, BLUE], 0),
        ("jpeg_trailing_junk.jpg", [RED, GREEN], 12),
        (os.fsdecode(NON_UTF8_NAME), [RED, GREEN], 12),
    ],
)
def test_modes_come_back_as_correct_rgb(good, name, colors, tol):
    folder, described = good
    if name not in described:
        pytest.skip("this file system refuses non-UTF-8 names")
    im = decode_image(folder / name)
    assert im.mode == "RGB" and im.size == (16 * len(colors), 16)
    got = [band(im, i) for i in range(len(colors))]
    assert all(close(g, w, tol) for g, w in zip(got, colors, strict=True)), f"{name}: {got} != {colors}"


@pytest.mark.parametrize("name", ["pixel_1x1.png", "tall_1x10000.png", "wide_10000x1.jpg"])
def test_extreme_sizes(good, name):
    folder, _ = good
    im = decode_image(folder / name)
    want_size, want = {"pixel_1x1.png": ((1, 1), (10, 20, 30)), "tall_1x10000.png": ((1, 10000), (10, 20, 30))}.get(
        name, ((10000, 1), (200, 100, 50))
    )
    assert im.size == want_size and im.mode == "RGB"
    assert close(im.getpixel((0, 0)), want, 6) and close(im.getpixel((want_size[0] - 1, want_size[1] - 1)), want, 6)


@pytest.mark.parametrize(
    "name", [f"orient_{k}.jpg" for k in range(1, 9)] + ["orient_6.png", "orient_8.webp", "orient_3.tif"]
)
def test_exif_orientation_is_applied_exactly_once(good, name):
    folder, _ = good
    im = decode_image(folder / name)
    assert im.size == UPRIGHT_SIZE
    w, h = UPRIGHT_SIZE
    x, y = {"l": w // 4, "r": w * 3 // 4}, {"t": h // 4, "b": h * 3 // 4}
    centres = {q: (x[q[1]], y[q[0]]) for q in ("tl", "tr", "bl", "br")}
    got = {quadrant: im.getpixel(xy) for quadrant, xy in centres.items()}
    assert all(close(got[q], colour, 30) for q, colour in UPRIGHT_QUADRANTS.items()), f"{name}: {got}"
    assert im.getexif().get(0x0112, 1) == 1


# --- JPEG draft mode ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    a = np.full((1500, 2000, 3), 90, np.uint8)
    a[..., 0] = np.arange(2000) * 255 // 2000
    a[..., 1] = (np.arange(1500) * 255 // 1500)[:, None]
    return encode(Image.fromarray(a), "JPEG", quality=85)


def test_draft_decodes_a_large_jpeg_at_a_reduced_scale(big_jpeg):
    full = decode_bytes(big_jpeg)
    assert full.size == (2000, 1500)
    small = decode_bytes(big_jpeg, min_side=256)
    assert 256 <= min(small.size) < 1500 and small.size == (500, 375)  # 1/4: 1/8 would give 188 < 256
    assert min(decode_bytes(big_jpeg, min_side=100).size) == 188  # 1/8
    assert decode_bytes(big_jpeg, min_side=1500).size == (2000, 1500)
    assert decode_bytes(big_jpeg, min_side=5000).size == (2000, 1500)
    reference = np.asarray(full.resize(small.size, Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(small, np.float32) - reference).mean() < 3


def test_draft_comes_before_orientation(big_jpeg):
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(io.BytesIO(big_jpeg)) as stored:
        data = encode(stored, "JPEG", quality=85, exif=exif)
    assert decode_bytes(data, min_side=256).size == (375, 500)
    assert decode_bytes(data).size == (1500, 2000)


def test_min_side_is_ignored_for_other_formats():
    data = encode(bands([RED, GREEN], height=600, width=400), "PNG")
    assert decode_bytes(data, min_side=64).size == (800, 600)


# --- decode_bytes, the API, the fuzz ------------------------------------------------------------------


def test_decode_bytes(good):
    folder, _ = good
    data = (folder / "rgba.png").read_bytes()
    assert decode_bytes(data).tobytes() == decode_image(folder / "rgba.png").tobytes()
    assert decode_bytes(bytearray(data)).size == decode_bytes(memoryview(data)).size == (48, 16)
    assert reason_of(decode_bytes, b"") == "empty"
    assert reason_of(decode_bytes, b"GIF89a") == "truncated"
    with pytest.raises(DecodeError, match="upload.jpg"):
        decode_bytes(b"not an image at all", name="upload.jpg")
    with pytest.raises(TypeError):
        decode_bytes("a str is not bytes")


def test_path_kinds_and_non_utf8_names(good):
    folder, described = good
    as_str = str(folder / "png_named.jpg")
    for path in (as_str, folder / "png_named.jpg", os.fsencode(as_str)):
        assert decode_image(path).size == (32, 16)
    if os.fsdecode(NON_UTF8_NAME) in described:
        raw = os.path.join(os.fsencode(folder), NON_UTF8_NAME)
        assert decode_image(raw).size == decode_image(os.fsdecode(raw)).size == (32, 16)
    with pytest.raises(DecodeError) as info:
        decode_image(os.path.join(os.fsencode(folder), b"missing\xff\n.jpg"))
    assert info.value.reason == "not_found" and "\n" not in str(info.value) and "\\udcff" in str(info.value)


def test_error_type_reasons_and_pickling():
    assert issubclass(DecodeError, FeatkitError)
    assert all(desc and "\n" not in desc for desc in REASONS.values())
    assert set(REASONS) == {
        "not_found", "not_a_file", "unreadable", "empty", "not_an_image",
        "format_not_allowed", "too_many_pixels", "truncated", "corrupt",
    }  # fmt: skip
    err = pickle.loads(pickle.dumps(DecodeError("truncated", "x.jpg: image file is truncated")))
    assert (err.reason, err.message, str(err)) == ("truncated", "x.jpg: image file is truncated", err.message)
    with pytest.raises(ValueError):
        DecodeError("no_such_reason", "x")
    assert pickle.loads(pickle.dumps(functools.partial(decode_image, min_side=224))).keywords == {"min_side": 224}
    with pytest.raises(ValueError):
        decode_bytes(b"x", min_side=0)
    with pytest.raises(ValueError):
        decode_bytes(b"x", max_pixels=0)


def test_every_bit_flip_in_a_png_s_image_data_is_corrupt_never_other_pixels(monkeypatch):
    # PIL skips the CRCs of IDAT chunks, and zlib's checksum misses some flips: without ours they load other pixels.
    yy, xx = np.mgrid[0:24, 0:32]
    smooth = Image.fromarray(np.stack([xx * 8, yy * 10, (xx + yy) * 4], -1).astype(np.uint8))
    png = encode(smooth, "PNG")
    start = png.index(b"IDAT") - 4
    end = start + 12 + int.from_bytes(png[start: start + 4], "big")
    flips = [bytes(png[:at]) + bytes([png[at] ^ 1 << (at % 8)]) + png[at + 1:] for at in range(start + 8, end)]

    def outcomes() -> dict[str, int]:
        seen: dict[str, int] = {}
        for data in flips:
            try:
                same = np.array_equal(np.asarray(decode_bytes(data)), np.asarray(smooth))
                outcome = "same pixels" if same else "other pixels"
            except DecodeError as e:
                outcome = e.reason
            seen[outcome] = seen.get(outcome, 0) + 1
        return seen

    assert outcomes() == {"corrupt": len(flips)}  # data and CRC bytes of the chunk, one flip each
    with monkeypatch.context() as patch:  # control: without the CRC check, some flips load other pixels
        patch.setattr(decode_module, "_check_png_crcs", lambda fp, name: None)
        assert outcomes().get("other pixels", 0) >= 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about the broken TIFF/EXIF data it is fed
def test_fuzz_only_decode_errors_escape():
    rng = np.random.default_rng(2024)
    image = bands([RED, GREEN, BLUE])
    seeds = [encode(image, fmt) for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")]
    samples = [rng.bytes(int(rng.integers(1, 3000))) for _ in range(200)]
    for _ in range(800):
        data = bytearray(seeds[int(rng.integers(len(seeds)))])
        for _ in range(int(rng.integers(1, 6))):
            at = int(rng.integers(len(data)))
            data[at : at + int(rng.integers(1, 5))] = rng.bytes(int(rng.integers(0, 5)))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data) + 1))]
        samples.append(bytes(data))
    outcomes = {}
    start = time.perf_counter()
    for data in samples:
        try:
            im = decode_bytes(data, max_pixels=1 << 22)
            assert im.mode == "RGB"
            outcomes["decoded"] = outcomes.get("decoded", 0) + 1
        except DecodeError as e:
            assert e.reason in REASONS
            outcomes[e.reason] = outcomes.get(e.reason, 0) + 1
    assert time.perf_counter() - start < 10
    assert outcomes["not_an_image"] >= 150 and outcomes["decoded"] >= 50 and len(outcomes) >= 5
