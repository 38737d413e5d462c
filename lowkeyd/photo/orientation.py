"""EXIF orientation as Pillow transpositions, both ways.

lowkeyd cloaks upright pixels and writes them back in the source's stored orientation
with the same Orientation tag, so the output displays exactly like the input in every
viewer, including those that ignore the tag.
"""

import numpy as np
from PIL import Image

T = Image.Transpose

# Orientation tag value -> the transposition that turns stored pixels upright.
TO_UPRIGHT: dict[int, Image.Transpose] = {
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_270,
    7: T.TRANSVERSE,
    8: T.ROTATE_90,
}
# ... and back: the rotations by 90 degrees swap, every other transposition undoes itself.
TO_STORED: dict[int, Image.Transpose] = {
    **TO_UPRIGHT,
    6: T.ROTATE_90,
    8: T.ROTATE_270,
}

# The same transpositions on (H, W, ...) arrays, for samples Pillow has no mode for (16-bit RGB).
_ARRAY_OPS = {
    T.FLIP_LEFT_RIGHT: lambda a: a[:, ::-1],
    T.FLIP_TOP_BOTTOM: lambda a: a[::-1],
    T.ROTATE_90: lambda a: np.rot90(a, 1),
    T.ROTATE_180: lambda a: a[::-1, ::-1],
    T.ROTATE_270: lambda a: np.rot90(a, -1),
    T.TRANSPOSE: lambda a: a.swapaxes(0, 1),
    T.TRANSVERSE: lambda a: a[::-1, ::-1].swapaxes(0, 1),
}


def transpose_array(array: np.ndarray, transpose: Image.Transpose | None) -> np.ndarray:
    """``array`` transposed as Pillow's ``Image.transpose(transpose)`` would; None leaves it as it is."""
    return array if transpose is None else np.ascontiguousarray(_ARRAY_OPS[transpose](array))
