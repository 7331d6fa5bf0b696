"""Fixed shares of the machine for child processes (focal_plugin.processes)."""

from __future__ import annotations

import subprocess
import sys
import time

from focal_plugin.processes import cpu_shares, gpu_shares


def test_cpu_shares_are_fixed_whatever_the_number_of_workers():
    assert cpu_shares(2, 1, [0, 1]) == [[0], [1]]
    assert cpu_shares(1, 1, [0, 1]) == [[0]]  # one worker does not take more threads
    assert cpu_shares(3, 2, [4, 5, 6, 7, 8, 9]) == [[4, 5], [6, 7], [8, 9]]
    assert cpu_shares(3, 1, [0, 1]) == [[0], [1], [0]]  # too few CPUs: shared, thread count kept


def test_gpu_shares_split_the_visible_gpus_or_share_them():
    assert gpu_shares(2, []) == [[], []]
    assert gpu_shares(2, ["0", "1", "2", "3"]) == [["0", "1"], ["2", "3"]]
    assert gpu_shares(3, ["0", "1"]) == [["0"], ["1"], ["0"]]


def test_a_child_dies_with_its_parent():
    """The parent (a shell) starts a child that watches it, then is killed: the child ends too."""
    child = ("import time, os; from focal_plugin.processes import die_with_parent; "
             "die_with_parent(os.getppid(), period_s=0.05); print(os.getpid(), flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time; "
                               f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"child {pid} outlived its parent")
