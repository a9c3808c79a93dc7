"""Decoding image bytes we did not write (dataset rows, manifests, scoring requests, result folders).

Only PNG, JPEG and WebP are ever decoded: Pillow is asked for those formats alone, so it never
hands a file to another plugin (EPS would run Ghostscript on the file's PostScript). The size in the
image's header is checked against a pixel limit before a single pixel is decoded, so a small file
that declares a huge image is refused at the cost of reading its header.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from .errors import DatasetError, ScdpoError
from .limits import IMAGE_FORMATS, MAX_IMAGE_PIXELS

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]
_FORMAT_NAMES = "PNG, JPEG or WebP"


def _open(source: ImageSource):
    from PIL import Image

    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else Path(source)
    with warnings.catch_warnings():  # our own pixel limit (lower than Pillow's) decides, quietly
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp, formats=list(IMAGE_FORMATS))


def image_size(source: ImageSource, what: str, error: type[ScdpoError] = DatasetError) -> tuple[int, int]:
    """``(width, height)`` from the image's header, without decoding it (PNG/JPEG/WebP only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _open(source) as im:
            return im.size
    except FileNotFoundError:
        raise error(f"{what}: image file is missing; remove it from the list or restore it") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise error(f"{what} cannot be decoded (not a {_FORMAT_NAMES} image); convert it to PNG") from None


def decode_rgb(source: ImageSource, what: str, max_pixels: int = MAX_IMAGE_PIXELS,
               error: type[ScdpoError] = DatasetError):
    """Bytes or a file → an RGB PIL image. Raises ``error`` (one line naming ``what``) for a format other
    than PNG/JPEG/WebP, an image of more than ``max_pixels`` pixels, or undecodable data."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, (bytes, bytearray, memoryview)) and len(source) == 0:
        raise error(f"{what} is empty; it must hold {_FORMAT_NAMES} bytes")
    try:
        with _open(source) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise error(f"{what} is {width}x{height} pixels, more than the {max_pixels / 1e6:.1f} megapixels "
                            "allowed; downscale it")
            im.load()
            return im.convert("RGB")
    except ScdpoError:
        raise
    except FileNotFoundError:
        raise error(f"{what}: image file is missing; remove it from the list or restore it") from None
    except UnidentifiedImageError:
        raise error(f"{what} cannot be decoded (not a {_FORMAT_NAMES} image); convert it to PNG or remove it") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise error(f"{what} cannot be decoded ({str(exc)[:80]}); replace or remove it") from None


def decode_rgb_array(source: ImageSource, what: str, max_pixels: int = MAX_IMAGE_PIXELS,
                     error: type[ScdpoError] = DatasetError) -> np.ndarray:
    """Like :func:`decode_rgb`, as a ``uint8 [H,W,3]`` array."""
    return np.asarray(decode_rgb(source, what, max_pixels, error))
