"""What a JPEG's marker segments say before its pixels.

Where its first scan is, whether the file reaches its end, and its first APP1 segment (where libjpeg-based
decoders look for the EXIF orientation).
"""

from __future__ import annotations

from collections.abc import Iterator

_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length: TEM, RST0-7
SOS, APP1 = 0xDA, 0xE1
_EOI = b"\xff\xd9"


def segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, offset of its payload, payload length) of each segment up to and including the first scan's header.

    Stops early, silently, at anything that is not a well-formed segment (the decoders say what is wrong).
    """
    if data[:2] != b"\xff\xd8":
        return
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            return
        yield marker, i + 4, length - 2
        if marker == SOS:
            return
        i += 2 + length


def is_whole(data: bytes) -> bool:
    """True when the JPEG's first scan is followed by an end-of-image marker (a cut-off file has none).

    The segments before the scan are skipped by their lengths, so an embedded EXIF thumbnail's marker does not
    count; inside entropy-coded data a 0xFF byte is always stuffed, so the first FF D9 after it is the real end.
    """
    for marker, start, length in segments(data):
        if marker == SOS:
            return data.find(_EOI, start + length) != -1
    return False


def first_app1(data: bytes) -> bytes | None:
    """The payload of the first APP1 segment (EXIF or XMP), or None."""
    for marker, start, length in segments(data):
        if marker == APP1:
            return data[start:start + length]
    return None
