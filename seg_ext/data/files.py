"""Reading files a user supplies, with one-sentence errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from seg_ext.errors import DatasetError


def read_image(path: Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB.

    Raises:
        DatasetError: the file is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image file {path} ({exc.__class__.__name__}); expected a PNG or JPEG image") from None


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
    """(height, width) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DatasetError(f"file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read image file {path} ({exc.__class__.__name__}); expected a PNG or JPEG image") from None


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
