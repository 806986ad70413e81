"""What Pillow does not say about an image file, read from its bytes: a PNG's bit depth, a PNG
whose image data ends early (Pillow fills the rows with black), a lossy WebP."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's header (None: not a PNG with a readable header)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
        return head[24]
    return None


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def png_image_data_ends_early(path: Path) -> bool:
    """Whether a PNG's image data (its IDAT stream) is cut short or holds fewer bytes than its
    header's size needs: Pillow fills the missing rows with black without a word. False for
    anything that is not a PNG with a readable header (Pillow judges those)."""
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            return False
        inflate, produced, header = zlib.decompressobj(), 0, None
        while True:
            head = f.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            data = f.read(length)
            f.read(4)  # CRC: Pillow checks it
            if kind == b"IHDR" and len(data) >= 13:
                header = struct.unpack(">IIBBBBB", data[:13])
            elif kind == b"IDAT":
                try:
                    produced += len(inflate.decompress(data, 1 << 20))
                    while inflate.unconsumed_tail:
                        produced += len(inflate.decompress(inflate.unconsumed_tail, 1 << 20))
                except zlib.error:
                    return True
            elif kind == b"IEND":
                break
    if header is None:
        return False
    width, height, depth, colour, _, _, interlace = header
    bits = depth * PNG_CHANNELS.get(colour, 1)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    need = 0
    for row0, col0, row_step, col_step in passes:
        rows, cols = -(-(height - row0) // row_step), -(-(width - col0) // col_step)
        if rows > 0 and cols > 0:
            need += rows * (1 + -(-cols * bits // 8))
    return produced < need or not inflate.eof


def webp_is_lossy(path: Path) -> bool:
    """Whether a WebP file holds a lossy (VP8) bitstream rather than a lossless (VP8L) one."""
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or f.read(8)[4:] != b"WEBP":
            return False
        while True:
            head = f.read(8)
            if len(head) < 8:
                return False
            kind, length = head[:4], struct.unpack("<I", head[4:])[0]
            if kind in (b"VP8 ", b"VP8L"):
                return kind == b"VP8 "
            f.seek(length + (length & 1), os.SEEK_CUR)
