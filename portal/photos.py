"""Photos as they may be shown: decoded, turned upright, scaled down and re-encoded without any metadata.

Phones write the GPS position, the time and the device into EXIF (and XMP, IPTC, maker notes); a re-encoded
copy carries none of it, since only the pixels are kept. The originals stay untouched in the blob store (they
are the record, and agencies may need them).
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

MAX_EDGE = 1600
MAX_PIXELS = 60_000_000  # a decompression bomb is refused rather than decoded


class NotAnImage(ValueError):
    pass


def strip_metadata(data: bytes, max_edge: int = MAX_EDGE) -> bytes:
    """A JPEG of the picture in `data` with no metadata at all; raises NotAnImage for anything undecodable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise NotAnImage("image too large")
                img.seek(0)  # the first frame of an animation
                upright = ImageOps.exif_transpose(img)
                picture = upright.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, NotAnImage):
            raise
        raise NotAnImage(type(exc).__name__) from None
    picture.thumbnail((max_edge, max_edge))
    out = io.BytesIO()
    # No exif=, icc_profile= or xmp= arguments: Pillow then writes none of them.
    picture.save(out, format="JPEG", quality=82, optimize=True)
    return out.getvalue()
