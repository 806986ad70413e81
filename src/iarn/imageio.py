"""Reading and writing images, with one written policy for every kind of input.

Policy (tests/test_imageio.py checks each line):

- EXIF orientation is applied on reading; the output is written upright, without EXIF.
- Grayscale (L, 1, I;8) is processed as RGB with three equal channels and written back as
  grayscale (the BT.601 luma of the three output channels, so PSNR-Y sees what the colour
  output would give), except an LR: the network hides detail in
  all three of its channels, so a grayscale photo's LR is written in colour (RGB, or RGBA)
  with `iarn:grayscale` recorded, and its upscale is written as grayscale again.
- Alpha (RGBA, LA, palette or RGB with transparency): the colour goes through the model; alpha
  is resized with the plain reference bicubic; the output is written with its alpha.
- Palette images are converted to RGB(A); CMYK and YCbCr to RGB.
- An ICC profile is carried to the output (dropped when converting from CMYK, where it would
  describe the wrong colour space).
- High bit depth (16-bit PNG, 16-bit or float TIFF) is refused with a clear message: Pillow
  would silently truncate 16-bit RGB to 8 bits, and the model works on 8-bit data.
- An LR PNG written by `iarn downscale` carries the original size as a text chunk
  (`iarn:hr_size` = "WxH"), which `iarn upscale` reads when no size is given.
- Images above Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`) are refused
  unless `allow_huge` is set.
- Writing is atomic: a temporary file in the target folder, renamed on success.
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from .containers import png_bit_depth, png_image_data_ends_early, webp_is_lossy
from .files import PNG_LEVEL, TargetExists, atomic_write
from .jpeg_quality import estimate_jpeg_quality

HR_SIZE_KEY = "iarn:hr_size"
MODEL_KEY = "iarn:model"  # NAME@HASH of the weights that made an LR (weights.weights_id)
REFINE_KEY = "iarn:refine"  # the refinement steps that chose the LR (0: the network's own LR)
GRAY_KEY = "iarn:grayscale"  # "1": the LR of a grayscale photo (written in colour, restored as grayscale)
JPEG_QUALITY = 95  # a JPEG LR's quality when none is asked for
PIXELS_KEY = "iarn:crc32"  # CRC-32 of the LR's pixels as written: a lossy re-encoding changes them
EXIF_DESCRIPTION = 0x010E  # JPEG and WebP LRs: the fields as "key=value;..." in EXIF's ImageDescription


class ImageError(ValueError):
    """An input that cannot be processed; the message is one line meant for the user."""


@dataclass(frozen=True)
class Picture:
    """An image as iarn processes it: rgb (H, W, 3) uint8, alpha (H, W) uint8 or None."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    grayscale: bool = False
    icc_profile: bytes | None = None
    hr_size: tuple[int, int] | None = None  # (H, W) recorded in an iarn LR file
    model_id: str | None = None  # the model recorded in an iarn LR file (NAME@HASH)
    lossy: str | None = None  # why the pixels are not those iarn wrote (a JPEG, a re-encoded PNG), if known
    jpeg_quality: int | None = None  # a JPEG's quality, as its quantisation tables tell (codec.py)

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[0], self.rgb.shape[1]

    def with_pixels(self, rgb: np.ndarray, alpha: np.ndarray | None) -> Picture:
        return replace(self, rgb=rgb, alpha=alpha, hr_size=None, model_id=None, lossy=None, jpeg_quality=None)


@contextlib.contextmanager
def _bomb_limit(allow_huge: bool):
    if not allow_huge:
        yield
        return
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _parse_hr_size(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (height, width) if width > 0 and height > 0 else None


def _parse_model_id(text: str | None) -> str | None:
    """NAME@HASH (12 hex digits), or None for anything else (a damaged or edited chunk)."""
    if not text or len(text) > 200 or "@" not in text:
        return None
    name, _, digest = text.rpartition("@")
    ok = name and name.isprintable() and len(digest) == 12 and all(c in "0123456789abcdef" for c in digest)
    return text if ok else None


def _is_16_bit_png(image: Image.Image) -> bool:
    # Pillow opens a 16-bit RGB(A) PNG as 8-bit "RGB" without a word; the decoder's raw mode tells
    return "16" in str(getattr(getattr(image, "png", None), "im_rawmode", ""))


def _recorded_fields(image: Image.Image) -> dict[str, str]:
    """What iarn recorded in a file: a PNG's text chunks, or the fields in a JPEG's or WebP's
    EXIF ImageDescription ("iarn:hr_size=WxH;iarn:model=..."); {} when none."""
    if image.format == "PNG":
        return {k: v for k, v in image.info.items() if isinstance(k, str) and k.startswith("iarn:")}
    try:
        text = image.getexif().get(EXIF_DESCRIPTION)
    except Exception:  # a damaged EXIF block is no reason to refuse the pixels
        return {}
    if not isinstance(text, str) or not text.startswith("iarn:"):
        return {}
    pairs = (item.partition("=") for item in text.split(";"))
    return {key: value for key, sep, value in pairs if sep and key.startswith("iarn:")}


def _fields_text(fields: dict[str, str]) -> str:
    return ";".join(f"{key}={value}" for key, value in fields.items())


def picture_from_pil(image: Image.Image) -> Picture:
    """Apply the policy to an opened (and loaded) Pillow image."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16") or _is_16_bit_png(image):
        raise ImageError("images of more than 8 bits per channel are not supported; convert it to 8-bit first")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ImageError(f"animated image ({frames} frames): iarn rescales still images; save one frame first")
    icc = image.info.get("icc_profile") or None
    fields = _recorded_fields(image)
    hr_size = _parse_hr_size(fields.get(HR_SIZE_KEY))
    model_id = _parse_model_id(fields.get(MODEL_KEY)) if hr_size is not None else None
    gray_source = hr_size is not None and fields.get(GRAY_KEY) == "1"
    lossy = _lossy_reason(image, fields.get(PIXELS_KEY))
    jpeg_quality = estimate_jpeg_quality(getattr(image, "quantization", None)) if image.format == "JPEG" else None
    image = ImageOps.exif_transpose(image)
    if image.width == 0 or image.height == 0:
        raise ImageError("the image has no pixels")
    grayscale = image.mode in ("1", "L", "LA", "La") or gray_source
    if image.mode == "CMYK":
        icc = None
    has_alpha = image.mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info
    if has_alpha:
        rgba = np.array(image.convert("RGBA"))
        rgb, alpha = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    else:
        rgb, alpha = np.array(image if image.mode == "RGB" else image.convert("RGB")), None
    return Picture(
        rgb=rgb,
        alpha=alpha,
        grayscale=grayscale,
        icc_profile=icc,
        hr_size=hr_size,
        model_id=model_id,
        lossy=lossy,
        jpeg_quality=jpeg_quality,
    )


def _pixels_crc(image: Image.Image) -> str:
    """CRC-32 of an image's colour as RGB bytes: the same for any lossless encoding of the pixels
    (palette, RGBA with an opaque alpha, ...)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return f"{zlib.crc32(rgb.tobytes()):08x}"


def _lossy_reason(image: Image.Image, recorded: str | None) -> str | None:
    """Why an opened image's pixels are not the ones iarn wrote, when it can tell: a JPEG, a
    lossy WebP, or an LR PNG or WebP whose `recorded` checksum no longer matches its colour
    (re-encoded lossily, or edited)."""
    if image.format == "JPEG":
        return "it is a JPEG"
    # files of earlier releases hold the CRC of the bytes in the file's own mode
    if isinstance(recorded, str) and recorded not in (_pixels_crc(image), f"{zlib.crc32(image.tobytes()):08x}"):
        return "its pixels are no longer those iarn wrote (re-encoded lossily, or edited)"
    return None


def picture_from_array(array: np.ndarray) -> Picture:
    """(H, W), (H, W, 3) or (H, W, 4) uint8 -> Picture."""
    if array.dtype != np.uint8:
        raise ImageError(f"arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        return Picture(rgb=np.repeat(array[..., None], 3, axis=2), grayscale=True)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        alpha = np.ascontiguousarray(array[..., 3]) if array.shape[2] == 4 else None
        return Picture(rgb=np.ascontiguousarray(array[..., :3]), alpha=alpha)
    raise ImageError(f"arrays must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")


def read_picture(path: str | os.PathLike, allow_huge: bool = False) -> Picture:
    """Read an image file under the policy; ImageError with a one-line reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file, not an image")
        if png_bit_depth(path) == 16:
            raise ImageError(f"{path}: 16-bit PNG is not supported; convert it to 8-bit first")
        if png_image_data_ends_early(path):
            raise ImageError(f"{path}: truncated or corrupt image (its image data ends before its last row)")
    except PermissionError:
        raise ImageError(f"{path}: cannot read it (permission denied)") from None
    size = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _bomb_limit(allow_huge), Image.open(path) as image:
                size = image.size
                _check_decodable(image)
                image.load()
                picture = picture_from_pil(image)
                if image.format == "WEBP" and picture.lossy is None and webp_is_lossy(path):
                    picture = replace(picture, lossy="it is a lossy WebP")
                return picture
    except ImageError as error:
        raise ImageError(f"{path}: {error}") from None
    except MemoryError:
        reason = _too_large(size, available_memory()) if size else "out of memory while decoding it"
        raise ImageError(f"{path}: {reason}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path}: larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels; "
            "pass --allow-huge if you trust it"
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot read it (permission denied)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as error:
        raise ImageError(f"{path}: truncated or corrupt image ({str(error).splitlines()[0]})") from None


DECODE_BYTES_PER_PIXEL = 8  # Pillow's decoded image and the RGB(A) array made from it, at most


def available_memory() -> int | None:
    """Bytes of memory this process may still take (MemAvailable on Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _too_large(size: tuple[int, int], available: int | None) -> str:
    width, height = size
    have = f"the {available / 2**30:.1f} GiB of memory available" if available else "the memory available"
    return (
        f"too large to decode: its {width}x{height} pixels need about "
        f"{width * height * DECODE_BYTES_PER_PIXEL / 2**30:.1f} GiB, more than {have} "
        "(no --tile or --precision helps: decoding needs the whole image; shrink it with another tool first)"
    )


def _check_decodable(image: Image.Image) -> None:
    """ImageError before decoding an image that cannot fit in memory (a decompression bomb let
    through by --allow-huge): decoding it would fail or make the machine swap."""
    available = available_memory()
    if available is not None and image.width * image.height * DECODE_BYTES_PER_PIXEL > available:
        raise ImageError(_too_large(image.size, available))


LUMA = np.array([0.299, 0.587, 0.114])  # BT.601, the proportions of PSNR-Y's weights


def luma_8bit(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) uint8: BT.601 luma, rounded."""
    return np.clip(np.round(rgb.astype(np.float64) @ LUMA), 0, 255).astype(np.uint8)


def to_pil(picture: Picture, lr: bool = False) -> Image.Image:
    """Picture -> Pillow image in the mode the policy writes (L, LA, RGB or RGBA); `lr`: an LR,
    always in colour."""
    if picture.grayscale and not lr:
        gray = luma_8bit(picture.rgb)
        if picture.alpha is not None:
            return Image.fromarray(np.stack([gray, picture.alpha], axis=2), "LA")
        return Image.fromarray(gray, "L")
    if picture.alpha is not None:
        return Image.fromarray(np.concatenate([picture.rgb, picture.alpha[..., None]], axis=2), "RGBA")
    return Image.fromarray(picture.rgb, "RGB")


def as_written(picture: Picture) -> np.ndarray:
    """The RGB (H, W, 3) uint8 that a file written from `picture` (not an LR) gives back when
    read: a grayscale picture's channels become their mean."""
    if not picture.grayscale:
        return picture.rgb
    return np.asarray(to_pil(replace(picture, alpha=None)).convert("RGB"))


def lossy_codec(path: str | os.PathLike, quality: int | None = None) -> tuple[str, int] | None:
    """The lossy codec and quality that `write_picture(..., path, quality=quality)` puts an
    image through: ("jpeg", Q) for any JPEG, ("webp", Q) for a WebP with a quality; None for
    a lossless file."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        return "jpeg", quality or JPEG_QUALITY
    return ("webp", quality) if suffix == ".webp" and quality is not None else None


def write_picture(
    picture: Picture,
    path: str | os.PathLike,
    hr_size: tuple[int, int] | None = None,
    png_level: int = PNG_LEVEL,
    model_id: str | None = None,
    overwrite: bool = True,
    refine: int | None = None,
    provisional: bool = False,
    quality: int | None = None,
) -> None:
    """Write atomically; `hr_size` (H, W), `model_id` (NAME@HASH of the weights that made an
    LR) and `refine` (its refinement steps) are recorded in PNG text chunks; `png_level` is
    zlib's level (0-9) for PNG. With `hr_size` the picture is an LR: written in colour even for
    a grayscale photo (module docstring).
    `overwrite=False`: an ImageError instead of replacing a file that exists when the write ends.
    `provisional`: see files.atomic_write (removed if the process is ended before files.settle).
    `quality` (1-100): a JPEG's (default JPEG_QUALITY), or a lossy WebP's (default: lossless WebP). JPEG
    and WebP LRs carry the same fields in their EXIF ImageDescription."""
    path = Path(path)
    image = to_pil(picture, lr=hr_size is not None)
    suffix = path.suffix.lower()
    image_format = Image.registered_extensions().get(suffix)
    if image_format is None:
        raise ImageError(f"{path}: unknown image file extension {suffix or '(none)'!r}; use .png")
    options: dict = {}
    if picture.icc_profile:
        options["icc_profile"] = picture.icc_profile
    fields: dict[str, str] = {}
    if hr_size is not None:
        fields[HR_SIZE_KEY] = f"{hr_size[1]}x{hr_size[0]}"
        if model_id is not None:
            fields[MODEL_KEY] = model_id
        if refine is not None:
            fields[REFINE_KEY] = str(refine)
        if picture.grayscale:
            fields[GRAY_KEY] = "1"
        lossless = image_format == "PNG" or image_format == "WEBP" and quality is None
        if lossless:
            fields[PIXELS_KEY] = _pixels_crc(image)
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in fields.items():
            info.add_text(key, value)
        options["pnginfo"] = info
        options["compress_level"] = png_level
    elif image_format in ("JPEG", "WEBP"):
        if image_format == "JPEG" and image.mode in ("RGBA", "LA"):
            raise ImageError(f"{path}: JPEG cannot hold the alpha channel; write PNG or WebP")
        if image_format == "JPEG" or quality is not None:
            options["quality"] = quality or JPEG_QUALITY
        else:
            options["lossless"] = True
        if fields:
            exif = Image.Exif()
            exif[EXIF_DESCRIPTION] = _fields_text(fields)
            options["exif"] = exif.tobytes()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(
            path,
            lambda tmp: image.save(tmp, format=image_format, **options),
            replace=overwrite,
            provisional=provisional,
        )
    except TargetExists:
        raise ImageError(f"{path}: exists (written by another process meanwhile?); pass --force to overwrite") from None
    except (KeyError, OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise ImageError(f"{path}: cannot write it ({reason})") from None
