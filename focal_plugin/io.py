"""Files and folders written atomically, and JSON read back with errors that name the file.

Every file the plugin leaves for a later reader (results, checkpoints, reports, caches) is written
to a temporary file in the same folder and renamed into place (``os.replace``), so a reader — a
resumed run, a report, another process — never sees half a file, even after SIGKILL. A folder
whose files belong together (a generated dataset, a pre-trained backbone) is filled the same way:
in a temporary folder beside it, renamed into place when complete (:func:`atomic_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Union


def atomic_write(path: Union[str, Path], write: Callable[[IO], None], binary: bool = False) -> None:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary file in the same
    folder (the folder is created), which is then renamed onto ``path``; on an error the
    temporary file is removed and ``path`` keeps its old content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def write_json_atomic(path: Union[str, Path], payload: Any, indent: Optional[int] = 2) -> None:
    """Write ``payload`` as JSON (sorted keys; non-JSON values as ``str``) atomically."""
    atomic_write(path, lambda f: json.dump(payload, f, indent=indent, sort_keys=True, default=str))


def write_figure_atomic(fig, path: Union[str, Path], **savefig: Any) -> None:
    """Save a matplotlib figure to ``path`` atomically, in the format its suffix names."""
    fmt = os.path.splitext(str(path))[1].lstrip(".")
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **savefig), binary=True)


@contextlib.contextmanager
def atomic_dir(final: Union[str, Path]) -> Iterator[Path]:
    """Create or replace the folder ``final`` atomically: yields a new empty folder beside it
    (``.tmp-<name>-<pid>``) for the block to fill; when the block ends without an exception it is
    renamed onto ``final`` (an existing ``final`` is first renamed to ``.trash-<name>-<pid>`` and
    then deleted: never half-deleted in place; between the two renames ``final`` is absent for an
    instant). On an exception (``KeyboardInterrupt`` included) the temporary folder is removed and
    ``final`` keeps its old content.

    Temporary and trash folders of ``final`` left by killed processes are removed on entry, so
    two processes must not fill the same ``final`` at once: hold a lock around the block (both
    callers do, iopath's ``file_lock``). The parent folder is created.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for prefix in (".tmp", ".trash"):
        for stale in final.parent.glob(f"{prefix}-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
            os.replace(final, trash)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(trash, final)
                raise
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class CorruptJSON(ValueError):
    """A file that exists but holds no JSON object (cut short, a merge conflict, edited by hand)."""


def read_json(path: str) -> Optional[Dict[str, Any]]:
    """The JSON object in ``path``, or None when the file does not exist.

    Raises :class:`CorruptJSON` (a ``ValueError`` naming ``path``) when it holds no JSON object.
    """
    try:
        with open(path) as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptJSON(f"{path}: not valid JSON ({e}): repair or remove it") from e
    if not isinstance(value, dict):
        raise CorruptJSON(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


__all__ = ["CorruptJSON", "atomic_dir", "atomic_write", "read_json", "write_json_atomic", "write_text_atomic"]


def read_jsonl(path: str) -> List[Dict[str, Any]]:
    """The objects of a JSON Lines file (detectron2's ``metrics.json``, a run record), in order; a
    line that does not parse — the last one, cut by a killed writer — is skipped. ``[]`` when the
    file does not exist."""
    if not os.path.isfile(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out
