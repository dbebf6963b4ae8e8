"""Turn an image file (or uploaded bytes) into a fully loaded RGB image, or a :class:`DecodeError`.

This is the only place featkit turns a file into pixels. The type is decided by content, never by the
extension; only :data:`ALLOWED_FORMATS` are parsed, so PIL never runs Ghostscript or any other external
decoder; the pixel count is checked from the header before any pixel is decoded; truncated files are
refused, never padded with grey. Every failure is a :class:`DecodeError` whose ``reason`` is a key of
:data:`REASONS`, so a run can skip the file, record why, and go on.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
import zlib
from dataclasses import dataclass
from typing import IO, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from featkit.data import shards
from featkit.errors import FeatkitError, check_int

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
DEFAULT_MAX_PIXELS = 89_478_485
ALPHA_BACKGROUND = (255, 255, 255)

REASONS: dict[str, str] = {
    "not_found": "the file does not exist (deleted, broken symlink or symlink loop)",
    "not_a_file": "the path is a directory, FIFO, device or socket, not a regular file",
    "unreadable": "the file exists but cannot be read (permission or I/O error)",
    "empty": "the file is 0 bytes long",
    "not_an_image": "the bytes are not an image in any format featkit knows",
    "format_not_allowed": "an image or document format featkit refuses to decode (EPS/PS, PDF, SVG, FITS, ICO...)",
    "too_many_pixels": "the header declares more pixels than max_pixels (decompression-bomb guard)",
    "truncated": "the file ends before the image data does",
    "corrupt": "the image data is damaged (bad checksum, broken stream, or another decode failure)",
}

Image.init()
# PIL opens MPO through its JPEG plugin (registered for saving only) and WEBP needs libwebp.
_OPEN_FORMATS = tuple(fmt for fmt in ALLOWED_FORMATS if fmt in Image.OPEN)
_JPEG_FORMATS = ("JPEG", "MPO")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_T = Image.Transpose  # EXIF orientation -> the transpose making it upright, as in PIL.ImageOps.exif_transpose
_TRANSPOSE = {2: _T.FLIP_LEFT_RIGHT, 3: _T.ROTATE_180, 4: _T.FLIP_TOP_BOTTOM, 5: _T.TRANSPOSE,
              6: _T.ROTATE_270, 7: _T.TRANSVERSE, 8: _T.ROTATE_90}  # fmt: skip
_MAGIC = ((b"%PDF-", "PDF"), (b"\xff\x0a", "JPEG XL"), (b"\x00\x00\x00\x0cJXL ", "JPEG XL"))
# O_NONBLOCK: a path swapped for a FIFO after os.stat must not make open() wait for a writer.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class DecodeError(FeatkitError):
    """A file or byte string that cannot be decoded; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown decode reason {reason!r}")
        super().__init__(message)
        self.reason, self.message = reason, message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # default pickling would call __init__(message) and fail in DataLoader workers
        return (type(self), (self.reason, self.message))


def decode_image(
    path: str | bytes | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode an image file into a fully loaded RGB image.

    Transparent pixels are composited on :data:`ALPHA_BACKGROUND`, 16-bit images are scaled (not clipped)
    to 8 bits, the EXIF orientation is applied exactly once and metadata is dropped (so it cannot be
    applied again). Animated GIF/PNG, multi-frame TIFF and MPO give their first frame.

    Args:
        path: File path; ``bytes`` and surrogate-escaped names (non-UTF-8) work. Symlinks are followed.
        max_pixels: Refuse images whose header declares more pixels (width * height of the stored image).
        min_side: If given, JPEGs are decoded at the smallest DCT scale (1/2, 1/4, 1/8) whose shorter
            side is still >= min_side, which is much faster when the image is resized afterwards.

    Raises:
        DecodeError: with ``reason`` one of :data:`REASONS`; never another exception for a bad file.
    """
    _check_args(max_pixels, min_side)
    name = _display(path)
    with _open_image_file(path, name) as fp:
        return _decode(fp, name, max_pixels, min_side)


def resized_pixels(size: tuple[int, int], resize: int) -> int:
    """Pixels of an image of ``size`` resized to ``resize`` on its shorter side (as torchvision sizes it)."""
    width, height = size
    short, long = min(width, height), max(width, height)
    return resize * int(resize * long / max(short, 1))


def open_image_file(path: str | bytes | os.PathLike) -> IO[bytes]:
    """The image file open for reading, after the checks :func:`decode_image` makes (the caller closes it).

    Raises:
        DecodeError: ``not_found``, ``not_a_file``, ``unreadable`` or ``empty``.
    """
    return _open_image_file(path, _display(path))


def read_image_bytes(path: str | bytes | os.PathLike) -> bytes:
    """An image file's bytes, with the checks :func:`decode_image` makes before decoding.

    Raises:
        DecodeError: ``not_found``, ``not_a_file``, ``unreadable`` or ``empty``.
    """
    name = _display(path)
    with _open_image_file(path, name) as fp:
        try:
            return fp.read()
        except OSError as e:
            raise DecodeError("unreadable", f"{name}: read error: {e.strerror or e}") from None


def _open_image_file(path: str | bytes | os.PathLike, name: str) -> IO[bytes]:
    if (member := shards.split_member(os.fsdecode(path))) is not None:
        try:  # a WebDataset sample's image, read where it lies in its shard
            return shards.open_member(*member, name)
        except shards.MemberError as e:
            raise DecodeError(e.reason, str(e)) from None
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DecodeError("not_a_file", f"{name}: is a {_kind(st.st_mode)}, not a regular file")
        fd = os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # ValueError: NUL byte in the path
        raise DecodeError("not_found", f"{name}: no such file (deleted, or a broken symlink)") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DecodeError("not_found", f"{name}: symlink loop") from None
        raise DecodeError("unreadable", f"{name}: cannot open: {e.strerror or e}") from None
    fp = open(fd, "rb")  # noqa: SIM115 - the caller closes it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between stat and open
            raise DecodeError("not_a_file", f"{name}: is a {_kind(st.st_mode)}, not a regular file")
        if st.st_size == 0:
            raise DecodeError("empty", f"{name}: file is empty (0 bytes)")
    except BaseException:
        fp.close()
        raise
    return fp


def decode_bytes(
    data: bytes | bytearray | memoryview, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None,
    name: str = "<bytes>"
) -> Image.Image:
    """Decode image bytes (an upload, a query) with the same rules as :func:`decode_image`.

    ``name`` is how the bytes are called in error messages. Raises :class:`DecodeError`.
    """
    _check_args(max_pixels, min_side)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_bytes needs bytes, got {type(data).__name__}")
    label = _display(name)
    if len(data) == 0:
        raise DecodeError("empty", f"{label}: no bytes (0 bytes)")
    return _decode(io.BytesIO(data), label, max_pixels, min_side)


def decode_pil(image: Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<image>") -> Image.Image:
    """An image the caller opened with PIL, or made, brought to the same RGB form as :func:`decode_image` gives.

    The first frame, the EXIF orientation applied once, alpha composited on :data:`ALPHA_BACKGROUND`, 16-bit scaled.
    Pixels are taken as they are: a JPEG the caller already loaded was not draft-decoded. Raises
    :class:`DecodeError`.
    """
    _check_args(max_pixels, None)
    if not isinstance(image, Image.Image):
        raise TypeError(f"decode_pil needs a PIL image, got {type(image).__name__}")
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("too_many_pixels", f"{name}: {width}x{height} = {width * height} pixels is more than "
                                             f"max_pixels={max_pixels}")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        orientation = _orientation(image)
        out = _to_rgb(image)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a lazily opened file that turns out to be damaged
        raise _failure(e, name, ran_out=False) from None
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    if out is image:
        out = image.copy()  # never hand back (and later change) the caller's own object
    out.info = {}
    return out


def decode_array(array: np.ndarray, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "<array>") -> Image.Image:
    """A uint8 array of shape (H, W) (grey), (H, W, 3) (RGB) or (H, W, 4) (RGBA) as an RGB image."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DecodeError("not_an_image", f"{name}: an image array must be uint8 (H, W), (H, W, 3) or (H, W, 4); "
                                          f"got {array.dtype} {array.shape}")
    return decode_pil(Image.fromarray(np.ascontiguousarray(array)), max_pixels=max_pixels, name=name)


ImageSource = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray
"""What featkit can embed: a file path, an image file's bytes, a PIL image or a uint8 array."""


def decode_source(source: ImageSource, *, min_side: int | None = None, name: str | None = None) -> Image.Image:
    """Decode any :data:`ImageSource` with the rules of its kind (bytes are a file's contents, not a path)."""
    if isinstance(source, Image.Image):
        return decode_pil(source, name=name or "<image>")
    if isinstance(source, np.ndarray):
        return decode_array(source, name=name or "<array>")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, min_side=min_side, name=name or "<bytes>")
    return decode_image(source, min_side=min_side)


_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: format (PIL's name), mode, (width, height) as stored, and for JPEGs more.

    For JPEG and MPO files: ``orientation`` is the EXIF orientation (1-8) featkit applies, read from the EXIF block
    or, where that has none, from XMP; ``orientation_in_exif`` says it came from the EXIF block; ``exif_readable``
    that the EXIF block, if any, parsed; ``progressive``: a progressive JPEG. Other formats leave these at their
    defaults: featkit's own decoder reads their orientation while decoding.
    """

    format: str
    mode: str
    size: tuple[int, int]
    orientation: int = 1
    orientation_in_exif: bool = False
    exif_readable: bool = True
    progressive: bool = False


def probe_image(source: bytes | IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                name: str = "<bytes>") -> ImageHeader:
    """Read an image's header from its bytes or an open file, with the checks :func:`decode_bytes` makes first.

    A file is read from its start, and only as far as its header goes.

    Raises:
        DecodeError: the bytes are no allowed image, or declare more than ``max_pixels`` pixels.
    """
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    fp.seek(0)
    probe = _EofProbe(fp)
    try:
        im = _open(probe, fp, name, max_pixels)
        if im.format not in _JPEG_FORMATS:
            return ImageHeader(str(im.format), im.mode, im.size)
        progressive = bool(im.info.get("progressive") or im.info.get("progression"))
        orientation = _orientation(im)
        readable, tagged = _exif_block(im)
        return ImageHeader(str(im.format), im.mode, im.size, orientation, orientation != 1 and tagged, readable,
                           progressive)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_many_pixels", f"{name}: too many pixels: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - header parsers raise many kinds of errors on malformed input
        raise _failure(e, name, ran_out=probe.hit_eof or _riff_cut(fp)) from None


def _exif_block(im: Image.Image) -> tuple[bool, bool]:
    """Whether the image's EXIF block (if any) parses, and whether it holds an orientation tag."""
    exif = im.info.get("exif")
    if not isinstance(exif, bytes):
        return True, False
    try:
        block = Image.Exif()
        block.load(exif)
        return True, 0x0112 in block
    except Exception:  # noqa: BLE001 - malformed EXIF: _orientation read none from it either
        return False, False


def _open(probe: _EofProbe, fp: IO[bytes], name: str, max_pixels: int) -> Image.Image:
    with _OPEN_LOCK, warnings.catch_warnings():
        # Our max_pixels check replaces PIL's global limit, which only warns below twice its value.
        # catch_warnings is process-global, so opens are serialised (header parsing only: microseconds);
        # PIL raises the warning in Image.open, never while decoding pixels, which runs unlocked.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(probe, formats=_OPEN_FORMATS)
        except UnidentifiedImageError:
            raise _unidentified(fp, name) from None
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            "too_many_pixels",
            f"{name}: {width}x{height} = {width * height} pixels is more than max_pixels={max_pixels}",
        )
    return im


def _decode(fp: IO[bytes], name: str, max_pixels: int, min_side: int | None) -> Image.Image:
    probe = _EofProbe(fp)
    opened = False
    try:
        im = _open(probe, fp, name, max_pixels)
        opened = True
        if min_side is not None and im.format in _JPEG_FORMATS:
            im.draft("RGB", (min_side, min_side))  # PIL picks the largest 1/s keeping both sides >= min_side
        im.load()
        if im.format == "PNG":
            _check_png_crcs(fp, name)
        orientation = _orientation(im)
        out = _to_rgb(im)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:  # PIL's own hard limit (2x its MAX_IMAGE_PIXELS), e.g. in GIF frames
        raise DecodeError("too_many_pixels", f"{name}: too many pixels: {e}") from None
    except MemoryError:
        raise  # the machine is out of memory, not the file's fault: let the run stop
    except Exception as e:  # noqa: BLE001 - plugins raise OSError, ValueError, SyntaxError, EOFError, ... on malformed input
        raise _failure(e, name, ran_out=(probe.hit_eof and not opened) or _riff_cut(fp)) from None
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    out.info = {}  # drop EXIF/XMP so nothing downstream applies the orientation a second time
    return out


def _failure(e: Exception, name: str, *, ran_out: bool) -> DecodeError:
    if isinstance(e, OSError) and e.errno is not None:  # a real read error; PIL's own OSErrors carry no errno
        return DecodeError("unreadable", f"{name}: read error: {e.strerror or e}")
    text = str(e) or type(e).__name__
    # Not "broken data stream": PIL says that for damaged zlib/LZW data; cut files say "truncated".
    cut = ran_out or isinstance(e, EOFError) or "truncat" in text.lower() or "not enough image data" in text
    return DecodeError("truncated" if cut else "corrupt", f"{name}: {text}")


def _check_png_crcs(fp: IO[bytes], name: str) -> None:
    """Refuse a PNG whose chunks' CRC-32s don't match their bytes (``corrupt``), as libpng does.

    PIL checks the CRCs of the chunks before the image data only, and zlib's own checksum at the end of the
    data does not catch every flipped bit in IDAT: some decode to other pixels without an error. A file that
    ends early stops the check; whether it is whole enough was PIL's call.
    """
    fp.seek(8)
    while len(head := fp.read(8)) == 8:
        at, left, kind = fp.tell() - 8, int.from_bytes(head[:4], "big"), head[4:]
        crc = zlib.crc32(kind)
        while left and (block := fp.read(min(left, 1 << 20))):
            crc, left = zlib.crc32(block, crc), left - len(block)
        stored = fp.read(4)
        if left or len(stored) < 4:
            return
        if int.from_bytes(stored, "big") != crc:
            label = kind.decode("latin-1")
            label = label if label.isalnum() else repr(label)
            raise DecodeError("corrupt", f"{name}: bad CRC in the PNG's {label} chunk at byte {at}")
        if kind == b"IEND":
            return


def _riff_cut(fp: IO[bytes]) -> bool:
    # libwebp is handed the whole file at once, so a cut-off WEBP shows only as a RIFF size beyond the end.
    try:
        fp.seek(0)
        head = fp.read(12)
        end = fp.seek(0, os.SEEK_END)
    except (OSError, ValueError):
        return False
    return head[:4] == b"RIFF" and head[8:] == b"WEBP" and int.from_bytes(head[4:8], "little") + 8 > end


class _EofProbe:
    """File wrapper noting whether a read came back short, i.e. a header parser ran past the end of the data."""

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        self.hit_eof = False

    def read(self, size: int | None = -1) -> bytes:
        data = self._fp.read(-1 if size is None else size)  # None and -1 both read to the end
        if size is not None and 0 <= len(data) < size:
            self.hit_eof = True
        return data

    def __getattr__(self, attr: str):
        return getattr(self._fp, attr)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in _SIXTEEN_BIT:
        # Scale 0..65535 to 0..255 (round(v / 257)); convert("L") would clip everything above 255 to white.
        a = np.clip(np.asarray(im), 0, 65535).astype(np.uint32)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":
        # Float images are taken as 0..1 when their maximum is <= 1, otherwise as 0..255.
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", im.size, ALPHA_BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted too), YCbCr, LAB; ValueError -> corrupt


_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


def _orientation(im: Image.Image) -> int:
    no_metadata = not any(key in im.info for key in _ORIENTATION_KEYS) and not hasattr(im, "tag_v2")
    if no_metadata and getattr(im, "_exif", None) is None:  # (a caller's image may carry an Exif it set)
        return 1  # what getexif() finds without these (it costs ~0.1 ms even then)
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the pixels: treat it as upright
        return 1


def _unidentified(fp: IO[bytes], name: str) -> DecodeError:
    fp.seek(0)
    head = fp.read(4096)
    for fmt in _OPEN_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and _accepts(accept, head[:16]):
            # The magic says fmt but PIL could not parse the header; parse again to learn why.
            probe = _EofProbe(fp)
            try:
                fp.seek(0)
                factory(cast(IO[bytes], probe), "")  # the probe forwards everything but read() to the file
            except Exception as e:  # noqa: BLE001 - whatever the parser raises is why the header is broken
                detail = str(e.__cause__ or e) or type(e).__name__
                return _failure(SyntaxError(f"broken {fmt} header: {detail}"), name, ran_out=probe.hit_eof)
            return DecodeError("corrupt", f"{name}: broken {fmt} header")
    other = _other_format(head)
    if other:
        allowed = ", ".join(ALLOWED_FORMATS)
        return DecodeError("format_not_allowed", f"{name}: {other} is not an allowed image format ({allowed})")
    return DecodeError("not_an_image", f"{name}: not an image (content matches no known image format)")


def _other_format(head: bytes) -> str | None:
    for fmt, (_, accept) in list(Image.OPEN.items()):
        if fmt not in ALLOWED_FORMATS and accept is not None and _accepts(accept, head[:16]):
            return fmt
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if head[4:8] == b"ftyp":
        return "HEIF/AVIF"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<") and b"<svg" in text and not text.startswith((b"<!doctype html", b"<html")):
        return "SVG"
    return None


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # noqa: BLE001 - some accept() functions index into the prefix without checking its length
        return False


def _check_args(max_pixels: int, min_side: int | None) -> None:
    check_int("max_pixels", max_pixels, "decode", minimum=1)  # a ParameterError is a ValueError
    if min_side is not None:
        check_int("min_side", min_side, "decode", minimum=1)


def _kind(mode: int) -> str:
    kinds = {stat.S_IFDIR: "directory", stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "device"}
    return kinds.get(stat.S_IFMT(mode), "special file")


def _display(path: str | bytes | os.PathLike) -> str:
    text = os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
