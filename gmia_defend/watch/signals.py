"""Ctrl-C and SIGTERM that never tear a record: inside a critical section they take effect at its end."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

__all__ = ["InterruptGuard"]


class InterruptGuard:
    """Turns SIGINT/SIGTERM into ``KeyboardInterrupt``, deferred to the end of any ``critical()`` block.

    >>> guard = InterruptGuard()
    >>> with guard.installed():
    ...     with guard.critical():
    ...         pass  # a signal here would be raised only after this block
    >>> guard.stop
    False
    """

    def __init__(self) -> None:
        self.in_critical = False
        self.stop = False

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self.in_critical = True
        try:
            yield
        finally:
            self.in_critical = False
        if self.stop:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Install the handlers (main thread only; elsewhere signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self.stop = True
            if not self.in_critical:
                raise KeyboardInterrupt

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
