"""Reading a written figure back: its pixels, and whether a test holds near a point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def rgb(path: Path) -> np.ndarray:
    """The image's pixels as ints, (H, W, 3)."""
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def near(img: np.ndarray, px: float, py: float, test, r: int = 3) -> bool:
    """Whether some pixel within `r` of (px, py) passes `test`."""
    y, x = int(round(py)), int(round(px))
    patch = img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].reshape(-1, 3)
    return bool(any(test(p) for p in patch))
