"""Exclusive locks on files that name their holder (the ablation runner's run folder and cells).

Locks are ``fcntl.flock`` locks on a file that also names its holder (pid, host, start time,
command): the kernel drops them when the holder dies, even by SIGKILL, so a stale lock never
blocks a resumed run, and a live one is refused with a message naming who holds it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from typing import Any, Dict, Optional

try:  # POSIX; elsewhere locking is not available and the runner says so
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


#: ``FileLock.acquire`` retries this often, this far apart, before refusing: another process's
#: ``is_held`` probe holds the lock for microseconds (more on a network file system)
ACQUIRE_TRIES, ACQUIRE_RETRY_S = 10, 0.02


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class LockHeld(RuntimeError):
    """The lock is held by another live process; ``holder`` describes it (pid, host, ...)."""

    def __init__(self, path: str, holder: Dict[str, Any], what: str):
        self.path = path
        self.holder = holder
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        since = holder.get("started", "?")
        cmd = holder.get("command", "")
        super().__init__(
            f"{what} is in use by another process: pid {pid} on host {host} (since {since})"
            + (f", running `{cmd}`" if cmd else "")
            + f". Lock file: {path}. Wait for it to finish or stop that process; two runners must "
            "not share one output folder."
        )


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` recording its holder.

    ``acquire`` raises :class:`LockHeld` naming the holder (pid, host, start time, command) when
    another process holds it. Not inherited by child processes started with ``close_fds=True``
    (Python's default), so a runner's lock dies with the runner.
    """

    def __init__(self, path: str, what: str = "this folder"):
        self.path = path
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self, **info: Any) -> FileLock:
        if fcntl is None:  # pragma: no cover
            return self
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(ACQUIRE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 == ACQUIRE_TRIES:
                    os.close(fd)
                    raise LockHeld(self.path, self.holder() or {}, self.what) from None
                time.sleep(ACQUIRE_RETRY_S)  # maybe only an is_held() probe, which holds it for an instant
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                  "command": " ".join(sys.argv), **info}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def holder(self) -> Optional[Dict[str, Any]]:
        """Who wrote the lock file last (the holder while it is held)."""
        try:
            with open(self.path) as f:
                text = f.read()
            return json.loads(text) if text.strip() else None
        except (FileNotFoundError, ValueError):
            return None

    def is_held(self) -> bool:
        """Whether some process (possibly this one) holds the lock now. Probes by taking the lock
        for an instant (``acquire`` retries for that); a lock file that cannot be opened (no read
        permission) counts as held: "cannot tell" must not make a live process look dead."""
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)  # flock needs no write access
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken just now
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the holder record stays for the curious
            self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()
