"""Locks of the runner (focal_plugin.locks): named holders, probes that never refuse."""

from __future__ import annotations

import os

import pytest

from focal_plugin.locks import FileLock, LockHeld


def test_lock_names_the_holder(tmp_path):
    held = FileLock(str(tmp_path / ".runner.lock"), what="run folder X").acquire()
    try:
        with pytest.raises(LockHeld) as info:
            FileLock(str(tmp_path / ".runner.lock"), what="run folder X").acquire()
        assert str(info.value).startswith("run folder X is in use by another process: pid "
                                          f"{os.getpid()} on host ")
    finally:
        held.release()
    FileLock(str(tmp_path / ".runner.lock")).acquire().release()  # free again once released


def test_lock_probes_never_refuse_a_real_acquire_and_never_crash(tmp_path, monkeypatch):
    """is_held() takes the lock for an instant: an acquire landing then retries instead of failing;
    a lock file that cannot be opened counts as held (cannot tell), one that is gone as free."""
    import threading

    path = str(tmp_path / ".cell.lock")
    open(path, "w").close()
    stop, refused = threading.Event(), []

    def probe():
        while not stop.is_set():
            FileLock(path).is_held()

    t = threading.Thread(target=probe)
    t.start()
    try:
        for _ in range(300):
            try:
                FileLock(path).acquire().release()
            except LockHeld:
                refused.append(1)
    finally:
        stop.set()
        t.join()
    assert not refused
    held = FileLock(path).acquire()
    try:
        with pytest.raises(LockHeld):  # a real holder is still refused (after the retries)
            FileLock(path).acquire()
    finally:
        held.release()
    assert not FileLock(str(tmp_path / "gone.lock")).is_held()
    import focal_plugin.locks as files_mod

    real_open = os.open

    def denied(p, *args, **kwargs):  # as for a teammate's lock file without read permission
        if p == path:
            raise PermissionError(13, "Permission denied", p)
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(files_mod.os, "open", denied)
    assert FileLock(path).is_held()

