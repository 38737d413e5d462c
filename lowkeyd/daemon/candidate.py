"""Looking at a file in a watched folder without trusting it.

Whoever can write into a watched folder (a sync peer, say) decides what is
there: a symbolic link to a private photo elsewhere on the disk, a FIFO, a
link to /dev/zero. So a candidate is resolved and refused when that leads out
of its watched folder (the rule ``POST /v1/jobs`` applies to its roots), and
refused unless it is a regular file. A stat never opens the file, so it cannot
block on a FIFO; it is then read as :mod:`lowkeyd.serving.reading` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

from lowkeyd.daemon.state import FileKey
from lowkeyd.paths import is_within
from lowkeyd.serving.reading import Refused, must_be_regular


def inspect(path: Path, root: Path) -> tuple[Path, FileKey]:
    """``path`` with its symbolic links resolved, and its key; Refused unless it is a regular file in ``root``.

    FileNotFoundError when it (or a link's target) does not exist.
    """
    real = path.resolve()
    if not is_within(real, root):
        raise Refused(f"a symbolic link to {real}, outside the watched folder: not read, not published")
    st = os.stat(real, follow_symlinks=False)
    must_be_regular(st)
    return real, FileKey(st.st_size, st.st_mtime_ns, st.st_ino)
