"""Files written atomically, and JSON read back with errors that name the file.

Every file the plugin leaves for a later reader (results, checkpoints, reports, caches) is written
to a temporary file in the same folder and renamed into place (``os.replace``), so a reader — a
resumed run, a report, another process — never sees half a file, even after SIGKILL.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, Callable, Dict, Optional


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
    """Create or replace ``path`` atomically: ``write(f)`` fills a temporary file in the same
    folder (the folder is created), which is then renamed onto ``path``; on an error the
    temporary file is removed and ``path`` keeps its old content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text))


def write_json_atomic(path: str, payload: Any, indent: Optional[int] = 2) -> None:
    """Write ``payload`` as JSON (sorted keys; non-JSON values as ``str``) atomically."""
    atomic_write(path, lambda f: json.dump(payload, f, indent=indent, sort_keys=True, default=str))


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


__all__ = ["CorruptJSON", "atomic_write", "read_json", "write_json_atomic", "write_text_atomic"]
