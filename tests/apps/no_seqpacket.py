"""The cluster app on a system like macOS: ``SOCK_SEQPACKET`` exists, but
making such a socket pair fails. ``RELAY_TEST_NO_FD_PASSING=1`` also takes
away passing file descriptors, so no relay transport works at all.

Only the operating system is altered (in the main process and every worker,
which import this module); the extension runs unchanged.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

_socketpair = socket.socketpair


def _no_seqpacket(*args: Any, **kwargs: Any) -> tuple[socket.socket, socket.socket]:
    kind = args[1] if len(args) > 1 else kwargs.get("type")
    if kind == socket.SOCK_SEQPACKET:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")
    return _socketpair(*args, **kwargs)


socket.socketpair = _no_seqpacket
if os.environ.get("RELAY_TEST_NO_FD_PASSING") and hasattr(socket, "send_fds"):
    del socket.send_fds

from tests.apps.cluster import app  # noqa: E402 (after the system is altered)

__all__ = ["app"]
