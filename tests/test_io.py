"""``focal_plugin/io.py``: files and folders replaced atomically — on success the new content, on an
exception inside the writer the old content, and no temporary file or folder left either way."""

from __future__ import annotations

import json
import os

import pytest
import torch

from focal_plugin.io import (
    CorruptJSON,
    atomic_dir,
    atomic_write,
    read_json,
    read_jsonl,
    write_figure_atomic,
    write_json_atomic,
    write_text_atomic,
)


def _entries(folder) -> list:
    return sorted(os.listdir(folder))


def test_atomic_write_creates_the_folder_and_replaces_the_file(tmp_path):
    path = tmp_path / "new" / "folder" / "a.txt"
    write_text_atomic(path, "one")
    write_text_atomic(path, "two")
    assert path.read_text() == "two" and _entries(path.parent) == ["a.txt"]


def test_an_error_inside_the_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"n": 1})

    def half_then_fail(f):
        f.write('{"n": ')
        raise KeyboardInterrupt  # a Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, half_then_fail)
    assert read_json(path) == {"n": 1} and _entries(tmp_path) == ["a.json"]


def test_binary_writes_take_torch_save(tmp_path):
    path = tmp_path / "w.pth"
    atomic_write(path, lambda f: torch.save({"x": torch.arange(3)}, f), binary=True)
    assert torch.equal(torch.load(path)["x"], torch.arange(3))


def test_json_is_sorted_and_read_back_naming_a_corrupt_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"b": 1, "a": float("nan"), "p": tmp_path}, indent=None)
    assert path.read_text().startswith('{"a": NaN, "b": 1')  # non-JSON values as str
    assert read_json(tmp_path / "missing.json") is None
    path.write_text('{"a": ')
    with pytest.raises(CorruptJSON, match="r.json"):
        read_json(path)
    path.write_text(json.dumps([1]))
    with pytest.raises(CorruptJSON, match="expected a JSON object"):
        read_json(path)


def test_atomic_dir_creates_then_replaces_a_folder(tmp_path):
    final = tmp_path / "parent" / "data"
    with atomic_dir(final) as tmp:
        assert tmp.is_dir() and tmp.parent == final.parent and not final.exists()
        (tmp / "a").write_text("1")
    assert _entries(final) == ["a"]
    with atomic_dir(final) as tmp:
        (tmp / "b").write_text("2")
        assert _entries(final) == ["a"]  # the old folder stays whole until the new one is complete
    assert _entries(final) == ["b"] and _entries(final.parent) == ["data"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_inside_atomic_dir_keeps_the_old_folder_and_leaves_no_temporary(tmp_path, error):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old").write_text("kept")
    with pytest.raises(error):
        with atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise error("killed mid-way")
    assert _entries(final) == ["old"] and (final / "old").read_text() == "kept"
    assert _entries(tmp_path) == ["data"]
    with pytest.raises(error):  # also when there was no folder before
        with atomic_dir(tmp_path / "fresh"):
            raise error("killed mid-way")
    assert _entries(tmp_path) == ["data"]


def test_atomic_dir_removes_what_killed_processes_left(tmp_path):
    final = tmp_path / "data"
    for stale in (f".tmp-{final.name}-99999", f".trash-{final.name}-99998"):
        (tmp_path / stale / "sub").mkdir(parents=True)
    (tmp_path / ".tmp-other-1").mkdir()  # another folder's: not touched
    with atomic_dir(final) as tmp:
        (tmp / "a").write_text("1")
    assert _entries(tmp_path) == [".tmp-other-1", "data"]


def test_a_failed_rename_restores_the_old_folder(tmp_path, monkeypatch):
    final = tmp_path / "data"
    final.mkdir()
    (final / "old").write_text("kept")
    real = os.replace

    def failing(src, dst):
        if str(src).startswith(str(tmp_path / ".tmp-")):
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_dir(final) as tmp:
            (tmp / "new").write_text("x")
    assert _entries(final) == ["old"] and _entries(tmp_path) == ["data"]


def test_json_lines_skip_a_line_cut_by_a_killed_writer(tmp_path):
    path = tmp_path / "metrics.json"
    assert read_jsonl(str(path)) == []
    path.write_text('{"iteration": 0, "loss_cls": 1.5}\n{"iteration": 1, "loss_cls": 1.2}\n{"iterat')
    assert read_jsonl(str(path)) == [{"iteration": 0, "loss_cls": 1.5}, {"iteration": 1, "loss_cls": 1.2}]


def test_a_figure_is_saved_in_the_format_of_its_suffix_leaving_no_temporary(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    write_figure_atomic(fig, tmp_path / "curve.svg")
    write_figure_atomic(fig, tmp_path / "curve.png", dpi=50)
    plt.close(fig)
    assert "<svg" in (tmp_path / "curve.svg").read_text()
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _entries(tmp_path) == ["curve.png", "curve.svg"]
