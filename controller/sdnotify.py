"""systemd notification (``sd_notify``): READY once started, WATCHDOG every healthy cycle, STOPPING on exit.

Does nothing when ``NOTIFY_SOCKET`` is unset (not started by systemd with ``Type=notify``). A socket
name starting with ``@`` is an abstract socket. No dependency beyond the standard library.
"""

from __future__ import annotations

import os
import socket


class SdNotify:
    """A datagram client for ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address = ("\0" + address[1:]) if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1"``); False if not enabled or the send failed."""
        if self._sock is None:
            return False
        try:
            self._sock.sendto(state.encode(), self._address)
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
