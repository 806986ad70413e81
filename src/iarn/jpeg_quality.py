"""A JPEG's quality from its quantisation tables (numpy only: `read_picture` asks it).

libjpeg, and so Pillow and most cameras and platforms, scale the standard tables of ITU T.81
Annex K by the quality; a file keeps its tables when its metadata is stripped, so the quality
that made a JPEG can be read back from them.
"""

from __future__ import annotations

import numpy as np

# libjpeg's base quantisation tables (ITU T.81, Annex K), luma and chroma, row by row
LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    *((99,) * 8,) * 4,
)


def libjpeg_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's (luma, chroma) 8x8 tables at `quality` (1-100), float64 (jpeg_quality_scaling,
    baseline: clamped to 1..255)."""
    factor = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(
        np.clip(np.floor((np.array(base, np.float64) * factor + 50) / 100), 1, 255)
        for base in (LUMA_TABLE, CHROMA_TABLE)
    )


def estimate_jpeg_quality(tables: dict[int, list[int]] | None) -> int | None:
    """The libjpeg quality (1-100) whose tables are nearest to a JPEG's quantisation `tables`
    (Pillow's `Image.quantization`: 64 values per table in natural order, luma first); None
    when there are none. Exact for tables scaled as libjpeg scales them; custom tables get the
    quality nearest in the mean absolute log ratio (the luma and first chroma tables)."""
    if not tables:
        return None
    given = [np.log(np.clip(np.asarray(list(table), np.float64), 1, None)) for _, table in sorted(tables.items())]
    if any(t.size != 64 for t in given):
        return None
    given = given[:2]

    def distance(quality: int) -> float:
        standard = libjpeg_tables(quality)
        return float(sum(np.abs(g - np.log(s.ravel())).mean() for g, s in zip(given, standard)))

    return min(range(1, 101), key=lambda quality: (distance(quality), -quality))


__all__ = ["CHROMA_TABLE", "LUMA_TABLE", "estimate_jpeg_quality", "libjpeg_tables"]
