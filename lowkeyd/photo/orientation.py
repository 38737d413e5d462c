"""EXIF orientation as Pillow transpositions, both ways.

lowkeyd cloaks upright pixels and writes them back in the source's stored orientation
with the same Orientation tag, so the output displays exactly like the input in every
viewer, including those that ignore the tag.
"""

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
