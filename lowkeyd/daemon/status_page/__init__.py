"""The status page: what the daemon cloaked, before and after, and why anything was not.

Served by the running daemon on a loopback port (see :mod:`.app`); opened with
``lowkeyd open`` (see :mod:`.auth` for how the browser is let in).
"""

from lowkeyd.daemon.status_page.app import StatusPage

__all__ = ["StatusPage"]
