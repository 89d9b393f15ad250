"""Reading files a user supplies, with one-sentence errors that name the file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from seg_ext.errors import DatasetError

# EXIF Orientation values that turn the picture by 90 degrees (width and height swap when it is shown)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_TAG = 0x0112


def _too_large(path: Path) -> DatasetError:
    return DatasetError(
        f"image file {path} is over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels; expected a "
        "smaller image (raise PIL.Image.MAX_IMAGE_PIXELS in your own code if you trust the file)")


def as_rgb(img: Image.Image) -> np.ndarray:
    """A PIL image as HxWx3 uint8 RGB: grayscale repeated, alpha dropped, 16- and 32-bit integers scaled to 8 bits
    (by the image's own maximum when it is under 256, so 8-bit data stored in a 16-bit file keeps its values)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = values.max() if values.size else 0
        if top > 255:
            values = values * (255.0 / (65535.0 if top <= 65535 else top))
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))


def read_image(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, turned as its EXIF orientation says (as browsers, LabelMe and CVAT
    show it and annotate it); masks and annotation files are read as stored.

    Raises:
        DatasetError: the file is missing, cannot be decoded (truncated, not an image), or has more pixels than
            PIL's decompression-bomb limit.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return as_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise DatasetError(f"image file {path} does not exist") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_large(path) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        detail = "truncated or damaged" if "truncated" in str(exc) or isinstance(exc, SyntaxError) else exc.__class__.__name__
        raise DatasetError(f"cannot read image file {path} ({detail}); expected a PNG or JPEG image") from None


def read_label_png(path: Path) -> np.ndarray:
    """Read a single-channel label PNG (mode L or P, palette indices kept) as an HxW array.

    Raises:
        DatasetError: the file is missing, unreadable or has colour channels.
    """
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DatasetError(
                    f"mask file {path} has image mode {img.mode}; expected a single-channel PNG of class ids"
                )
            return np.asarray(img)
    except FileNotFoundError:
        raise DatasetError(f"mask file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read mask file {path} ({exc.__class__.__name__}); expected a PNG") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image as shown (EXIF orientation applied, as :func:`read_image` reads it), from its
    header, without decoding the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # reading the size is safe
            with Image.open(path) as img:
                turned = _orientation(img) in _SWAPPING_ORIENTATIONS
                return (img.width, img.height) if turned else (img.height, img.width)
    except FileNotFoundError:
        raise DatasetError(f"file {path} does not exist") from None
    except Image.DecompressionBombError:
        raise _too_large(path) from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image file {path} ({exc.__class__.__name__}); expected a PNG or JPEG image") from None


def _orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag of an open image (1 when absent or unreadable)."""
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a damaged EXIF block: shown as stored, as exif_transpose would
        return 1


def read_json(path: str | Path, kind: str, expected: str, type_: type = object) -> Any:
    """Parse a JSON file, checking that it holds a ``type_``.

    Raises:
        DatasetError: "<kind> <path> does not exist / is not valid JSON / holds a ...; expected <expected>".
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{kind} {path} does not exist; expected {expected}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DatasetError(f"{kind} {path} is not valid JSON; expected {expected}") from None
    if not isinstance(data, type_):
        raise DatasetError(f"{kind} {path} holds a {type(data).__name__}; expected {expected}")
    return data
