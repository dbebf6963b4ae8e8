"""Generators of small test corpora for the image decoder: bad files, and valid files in odd modes.

``write_bad_corpus`` writes files that must each be skipped with a reason code (see
``featkit.data.decode.REASONS``); ``write_odd_but_good_corpus`` writes valid images that must decode to
correct RGB pixels. Both write into a flat folder, take well under a second, and are deterministic.
File names end in image extensions whatever the content, because featkit decides by content.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import struct
import zlib

import numpy as np
from PIL import Image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
# Upright reference for the EXIF orientation files: 48x32, quadrants TL red, TR green, BL blue, BR white.
UPRIGHT_SIZE = (48, 32)
UPRIGHT_QUADRANTS = {"tl": RED, "tr": GREEN, "bl": BLUE, "br": WHITE}
# The transpose that undoes each orientation is its own inverse, except 6 and 8 which undo each other.
_STORE = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
NON_UTF8_NAME = b"caf\xe9_latin1.jpg"  # not valid UTF-8: Python sees it as 'caf\udce9_latin1.jpg'


def upright_image() -> Image.Image:
    """The asymmetric pattern every ``orient_k`` file shows once its orientation is applied."""
    a = np.zeros((32, 48, 3), np.uint8)
    a[:16, :24], a[:16, 24:], a[16:, :24], a[16:, 24:] = RED, GREEN, BLUE, WHITE
    return Image.fromarray(a)


def bands(colors, height: int = 16, width: int = 16, mode: str | None = None) -> Image.Image:
    """A strip of vertical 8-bit bands, one per colour in ``colors`` (tuples or scalars), each ``width`` wide."""
    a = np.concatenate([np.full((height, width) + np.shape(c), c) for c in colors], axis=1).astype(np.uint8)
    return Image.fromarray(a) if mode is None else Image.frombytes(mode, (a.shape[1], a.shape[0]), a.tobytes())


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    """Encode ``im`` with PIL into bytes."""
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_bytes(width: int, height: int, depth: int, color_type: int, idat: bytes, crc_ok: bool = True) -> bytes:
    """A PNG with the given IHDR fields and already-compressed IDAT (for what PIL cannot write)."""

    def chunk(kind: bytes, data: bytes, good: bool = True) -> bytes:
        crc = zlib.crc32(kind + data) ^ (0 if good else 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr, crc_ok) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A valid side x side 1-bit black PNG: ~110 KB for 30000 (900 M pixels), built in ~0.1 s."""
    rows = 1000 if side % 1000 == 0 else 1
    block = bytes((1 + (side + 7) // 8) * rows)  # filter byte 0 + packed zero bits, for `rows` rows
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    # A full flush resets the compressor, so every copy of the block compresses to the same bytes.
    body = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // rows):
        adler = zlib.adler32(block, adler)
    idat = b"\x78\xda" + body * (side // rows) + deflate.flush(zlib.Z_FINISH) + struct.pack(">I", adler)
    return png_bytes(side, side, 1, 0, idat)


def _jpeg_segments(data: bytes) -> dict[int, int]:
    """Offsets of the first marker of each kind up to SOS (0xDA), and where the scan data starts."""
    found, i = {}, 2
    while i + 4 <= len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        found.setdefault(marker, i)
        i += 2 + length
        if marker == 0xDA:
            found[-1] = i
            break
    return found


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _write(dirpath, name: str | bytes, data: bytes) -> None:
    with open(os.path.join(os.fsencode(dirpath), os.fsencode(name)), "wb") as f:
        f.write(data)


_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto showpage\n%%EOF\n"
_PS = b"%!PS-Adobe-3.0\n%%Pages: 1\n/Helvetica findfont 12 scalefont setfont\nshowpage\n"
_EPS_BINARY = b"\xc5\xd0\xd3\xc6" + struct.pack("<6I", 30, 72, 0, 0, 0, 0xFFFF) + _EPS
_PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
_SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"><rect/></svg>'
_SVG_BARE = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><circle r="4"/></svg>\n'
_FITS_CARDS = ("SIMPLE  = T", "BITPIX  = 8", "NAXIS   = 2", "NAXIS1  = 4", "NAXIS2  = 4", "END")
_FITS = b"".join(card.ljust(80).encode() for card in _FITS_CARDS).ljust(2880) + bytes(2880)
_HTML = b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>"
# A GIF whose logical screen is 65535x65535 (4.3 G pixels) around a single 1x1 frame.
_GIF_BOMB = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b",\0\0\0\0\1\0\1\0\0\2\2D\1\0;"


def write_bad_corpus(dirpath: str | os.PathLike) -> dict[str, str]:
    """Write >= 40 files that must be skipped into ``dirpath``; return file name -> expected reason code.

    The reasons are what ``featkit.data.decode`` deterministically reports. Special files (FIFO, socket,
    symlinks) are only made where the OS supports them.
    """
    os.makedirs(dirpath, exist_ok=True)
    gray = zlib.compress(bytes(17 * 16))  # IDAT of a 16x16 8-bit gray PNG
    by_reason: dict[str, dict[str, bytes]] = {
        "empty": {"empty.jpg": b""},
        "not_an_image": {
            "text.jpg": b"hello, this is not a picture\n" * 20,
            "text_utf16.png": "just some text, in UTF-16".encode("utf-16"),
            "html.jpg": _HTML,
            "html_with_svg_icon.png": b"<html><body><svg width='4'></svg></body></html>",
            "json.png": b'{"error": "rate limited", "retry": 30}',
            "zeros.jpg": bytes(4096),
            **{f"random_{seed}.jpg": np.random.default_rng(seed).bytes(size)
               for seed, size in enumerate((16, 100, 1000, 3000, 5000, 20000))},
        },  # fmt: skip
        "format_not_allowed": {
            "eps.jpg": _EPS,
            "postscript.png": _PS,
            "eps_binary_header.jpg": _EPS_BINARY,
            "document.jpg": _PDF,
            "vector.jpg": _SVG,
            "vector_bare.png": _SVG_BARE,
            "fits.jpg": _FITS,
            "icon.jpg": encode(bands([RED, GREEN]), "ICO", sizes=[(16, 16)]),
        },
        "too_many_pixels": {
            "bomb_30000.png": bomb_png(30000),
            "bomb_10000.png": bomb_png(10000),  # PIL itself only warns between 1x and 2x its limit
            "bomb_gif_screen.gif": _GIF_BOMB,
        },
        "corrupt": {
            "png_zero_width.png": png_bytes(0, 16, 8, 0, zlib.compress(b"")),
            "png_bad_color_type.png": png_bytes(16, 16, 8, 5, gray),
            "png_bad_ihdr_crc.png": png_bytes(16, 16, 8, 0, gray, crc_ok=False),
        },
        "truncated": {},
    }

    jpeg = encode(_noise(64, 48), "JPEG", quality=90)
    seg = _jpeg_segments(jpeg)
    scan, end = seg[-1], len(jpeg)
    by_reason["not_an_image"]["jpeg_cut_2_bytes.jpg"] = jpeg[:2]  # PIL needs FF D8 FF to call it a JPEG
    cuts = {
        "3_bytes": 3,
        "in_app0": seg[0xE0] + 6,
        "after_app0": seg[0xDB],
        "in_dqt": seg[0xDB] + 30,
        "before_sof": seg[0xC0],
        "in_sof": seg[0xC0] + 7,
        "in_dht": seg[0xC4] + 20,
        "at_scan": scan,
        "scan_25pct": scan + (end - scan) // 4,
        "scan_50pct": scan + (end - scan) // 2,
        "scan_90pct": scan + (end - scan) * 9 // 10,
        "no_eoi": end - 2,  # PIL refuses a JPEG that lacks only its 2-byte end marker
    }
    truncated = by_reason["truncated"]
    truncated.update({f"jpeg_cut_{label}.jpg": jpeg[:offset] for label, offset in cuts.items()})

    png = encode(_noise(64, 48), "PNG")
    by_reason["not_an_image"]["png_cut_4_bytes.png"] = png[:4]
    truncated["png_cut_signature.png"] = png[:8]
    truncated["png_cut_in_ihdr.png"] = png[:20]
    truncated["png_cut_in_ihdr_crc.png"] = png[:31]
    truncated["png_cut_idat_50pct.png"] = png[: len(png) // 2]
    by_reason["corrupt"]["png_idat_damaged.png"] = png[:200] + bytes(60) + png[260:]  # "broken data stream"
    by_reason["corrupt"]["png_idat_bad_crc.png"] = _bad_idat_crc(png)  # the pixels decode; PIL skips IDAT CRCs

    gif = encode(_noise(64, 48), "GIF")
    half = len(gif) // 2
    truncated["gif_cut_header.gif"] = gif[:13]
    truncated["gif_cut_50pct.gif"] = gif[:half]
    by_reason["corrupt"]["gif_data_damaged.jpg"] = gif[:half] + bytes(range(40)) + gif[half + 40 :]
    truncated["webp_cut_50pct.webp"] = encode(_noise(64, 48), "WEBP")[:600]
    truncated["bmp_cut_50pct.bmp"] = encode(_noise(32, 32), "BMP")[:1600]
    truncated["tiff_cut_ifd_lost.jpg"] = encode(_noise(32, 32), "TIFF")[:1600]  # PIL writes the IFD last

    expected = {}
    for reason, files in by_reason.items():
        for name, data in files.items():
            _write(dirpath, name, data)
            expected[name] = reason

    base = os.fspath(dirpath)
    os.mkdir(os.path.join(base, "directory.jpg"))
    expected["directory.jpg"] = "not_a_file"
    if hasattr(os, "symlink"):
        links = {
            "broken_link.jpg": ("missing-target.jpg", "not_found"),
            "loop_link.jpg": ("loop_link.jpg", "not_found"),
            "link_to_directory.jpg": ("directory.jpg", "not_a_file"),
        }
        if os.path.exists("/dev/null"):
            links["devnull.jpg"] = ("/dev/null", "not_a_file")
        for name, (target, reason) in links.items():
            os.symlink(target, os.path.join(base, name))
            expected[name] = reason
    if hasattr(os, "mkfifo"):
        os.mkfifo(os.path.join(base, "fifo.jpg"))
        expected["fifo.jpg"] = "not_a_file"
    if hasattr(socket, "AF_UNIX"):
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(os.path.join(base, "socket.jpg"))
            expected["socket.jpg"] = "not_a_file"
        except OSError:  # path too long for a socket address
            pass
    return expected


def write_odd_but_good_corpus(dirpath: str | os.PathLike) -> dict[str, str]:
    """Write valid images in odd modes, layouts and names; return file name -> short description.

    Colour bands are 16x16 px, left to right, so a test can check each band's centre pixel.
    """
    os.makedirs(dirpath, exist_ok=True)
    gray16 = np.repeat(np.array([[65535, 32768, 0]], np.uint16), 16, axis=1).repeat(16, axis=0)
    rgba = bands([(255, 0, 0, 255), (0, 0, 0, 0), (255, 0, 0, 128)])
    palette = Image.fromarray(np.repeat(np.array([[0, 1]], np.uint8), 16, axis=1).repeat(16, axis=0), "P")
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    cmyk = bands([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)], mode="CMYK")
    frames = [bands([c, c]) for c in (RED, GREEN, BLUE)]
    rgb16_row = b"\x00" + struct.pack(">3H", 65535, 32768, 0) * 16
    red_green, bilevel = bands([RED, GREEN]), bands([0, 255]).convert("1")
    three = bands([RED, GREEN, BLUE])
    jpeg = functools.partial(encode, fmt="JPEG", quality=95)
    animated = {"save_all": True, "append_images": frames[1:]}
    files: dict[str, tuple[bytes, str]] = {
        "cmyk.jpg": (jpeg(cmyk), "CMYK JPEG (Adobe-inverted): white | cyan | black"),
        "cmyk.tif": (encode(cmyk, "TIFF"), "CMYK TIFF: white | cyan | black"),
        "gray16.png": (encode(Image.fromarray(gray16), "PNG"), "16-bit gray PNG (I;16): 65535 | 32768 | 0"),
        "gray16.tif": (encode(Image.fromarray(gray16), "TIFF"), "16-bit gray TIFF (I;16): 65535 | 32768 | 0"),
        "gray16_big_endian.tif": (encode(Image.fromarray(gray16.astype(">u2")), "TIFF"), "I;16B TIFF: same"),
        "gray16.pgm": (encode(Image.fromarray(gray16), "PPM"), "16-bit PGM (maxval 65535): same"),
        "int32.tif": (encode(Image.fromarray(gray16.astype(np.int32)), "TIFF"), "32-bit int TIFF (I): same"),
        "float01.tif": (encode(Image.fromarray(gray16 / np.float32(65535)), "TIFF"), "float TIFF in 0..1: 1 | .5 | 0"),
        "float255.tif": (encode(Image.fromarray(gray16 / np.float32(257)), "TIFF"), "float TIFF in 0..255"),
        "rgb16.png": (png_bytes(16, 16, 16, 2, zlib.compress(rgb16_row * 16)), "16-bit RGB PNG (65535, 32768, 0)"),
        "palette_transparent.png": (encode(palette, "PNG", transparency=1), "P + tRNS: red | transparent"),
        "palette_transparent.gif": (encode(palette, "GIF", transparency=1), "GIF transparent index: red | clear"),
        "rgba.png": (encode(rgba, "PNG"), "RGBA: opaque red | transparent black | half-transparent red"),
        "rgba.webp": (encode(rgba, "WEBP", lossless=True, exact=True), "lossless RGBA WEBP: as rgba.png"),
        "la.png": (encode(bands([(0, 255), (0, 0)]), "PNG"), "LA: opaque black | transparent black"),
        "rgb_color_key.png": (encode(bands([RED, BLUE]), "PNG", transparency=BLUE), "RGB + tRNS key: red | clear"),
        "bilevel.png": (encode(bilevel, "PNG"), "1-bit PNG: black | white"),
        "bilevel_g4.tif": (encode(bilevel, "TIFF", compression="group4"), "1-bit CCITT G4 TIFF: black | white"),
        "gray.jpg": (jpeg(bands([0, 128, 255])), "8-bit gray JPEG: 0 | 128 | 255"),
        "ycbcr.tif": (encode(red_green.convert("YCbCr"), "TIFF"), "YCbCr TIFF: red | green"),
        "lab.tif": (encode(red_green.convert("LAB"), "TIFF"), "CIELAB TIFF: red | green"),
        "progressive.jpg": (jpeg(three, progressive=True), "progressive JPEG: red | green | blue"),
        "animated.gif": (encode(frames[0], "GIF", duration=50, **animated), "3-frame GIF red, green, blue"),
        "animated.png": (encode(frames[0], "PNG", duration=50, **animated), "3-frame APNG red, green, blue"),
        "multipage.tif": (encode(frames[0], "TIFF", **animated), "3-page TIFF red, green, blue"),
        "multipicture.jpg": (jpeg(frames[0], fmt="MPO", **animated), "3-picture MPO red, green, blue"),
        "tiff_named.jpg": (encode(red_green, "TIFF"), "TIFF named .jpg: red | green"),
        "png_named.jpg": (encode(red_green, "PNG"), "PNG named .jpg: red | green"),
        "jpeg_named.png": (jpeg(red_green), "JPEG named .png: red | green"),
        "pixel_1x1.png": (encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), "1x1 RGB (10, 20, 30)"),
        "tall_1x10000.png": (encode(Image.new("RGB", (1, 10000), (10, 20, 30)), "PNG"), "1x10000 (10, 20, 30)"),
        "wide_10000x1.jpg": (jpeg(Image.new("RGB", (10000, 1), (200, 100, 50))), "10000x1 JPEG (200, 100, 50)"),
        "lossy.webp": (encode(red_green, "WEBP", quality=90), "lossy WEBP: red | green"),
        "bottom_up.bmp": (encode(three, "BMP"), "BMP: red | green | blue"),
        "rgb.ppm": (encode(three, "PPM"), "binary PPM: red | green | blue"),
        "jpeg_trailing_junk.jpg": (jpeg(red_green) + b"junk after EOI" * 10, "JPEG with bytes after EOI"),
    }
    upright = upright_image()
    for k, store in _STORE.items():
        stored = upright if store is None else upright.transpose(store)
        files[f"orient_{k}.jpg"] = (jpeg(stored, subsampling=0, exif=_exif(k)), f"EXIF orientation {k}")
    files["orient_6.png"] = (encode(upright.transpose(_STORE[6]), "PNG", exif=_exif(6)), "PNG eXIf orientation 6")
    files["orient_8.webp"] = (encode(upright.transpose(_STORE[8]), "WEBP", lossless=True, exif=_exif(8)), "WEBP, 8")
    files["orient_3.tif"] = (encode(upright.transpose(_STORE[3]), "TIFF", exif=_exif(3)), "TIFF Orientation tag 3")

    for name, (data, _) in files.items():
        _write(dirpath, name, data)
    described = {name: text for name, (_, text) in files.items()}
    try:
        _write(dirpath, NON_UTF8_NAME, jpeg(red_green))
        described[os.fsdecode(NON_UTF8_NAME)] = "JPEG whose name is not UTF-8: red | green"
    except (OSError, UnicodeError):  # file systems that insist on UTF-8 names
        pass
    return described


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _bad_idat_crc(png: bytes) -> bytes:
    idat = png.index(b"IDAT") - 4
    end = idat + 12 + int.from_bytes(png[idat : idat + 4], "big")
    return png[: end - 4] + bytes(4) + png[end:]
