"""Every task of `invoke --list` answers `invoke TASK --help` (and -h) with its usage, exit 0,
without running: also the tasks with required positional arguments, which invoke itself fed
`--help` as their first argument (pyinvoke/invoke#982)."""
from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from invoke import Collection
from invoke_cli import INVOKE, run_invoke

from rig import paths


def _listed_tasks() -> list[str]:
    listing = subprocess.run([str(INVOKE), "--list", "--list-format=json"], cwd=paths.REPO_ROOT,
                             capture_output=True, text=True, check=True, timeout=60)
    return [entry["name"] for entry in json.loads(listing.stdout)["tasks"]]


TASKS = _listed_tasks()


@functools.cache
def _collection() -> Collection:
    spec = importlib.util.spec_from_file_location("trapsplice_tasks", paths.REPO_ROOT / "tasks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Collection.from_module(module)


def _flags(name: str) -> list[str]:
    """The task's options as its usage spells them (--long, or -x for a one-letter name)."""
    flags = []
    for argument in _collection()[name].get_arguments():
        long = [n.replace("_", "-") for n in argument.names if len(n) > 1]
        negatable = argument.kind is bool and argument.default is True  # shown as --[no-]NAME
        flags.append(f"--{'[no-]' if negatable else ''}{long[0]}" if long else f"-{argument.names[0]}")
    return flags


def test_the_task_list_is_the_documented_one() -> None:
    assert {"splice", "unsplice", "set", "get", "load", "unload", "bench", "boot", "adapt"} <= set(TASKS)


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("task", TASKS)
def test_every_task_answers_help(task: str, flag: str, tmp_path: Path) -> None:
    done = run_invoke(task, flag, cache=tmp_path)
    assert done.code == 0, done.out
    assert done.out.startswith(f"Usage: inv[oke] [--core-opts] {task} "), done.out
    assert "Traceback" not in done.out and "error:" not in done.out
    for option in _flags(task):
        assert option in done.out, f"{task} --help does not name {option}:\n{done.out}"
    # The same text as invoke's own `invoke --help TASK`, which always worked.
    assert done.out == run_invoke("--help", task, cache=tmp_path).out
    assert not (tmp_path / "run" / "guest.json").exists(), "asking for help started a guest"


def test_help_after_a_given_positional_still_answers(tmp_path: Path) -> None:
    done = run_invoke("set", "mss_adapt.fer", "--help", cache=tmp_path)
    assert done.code == 0 and "--value=STRING" in done.out, done.out


def test_a_missing_positional_is_still_an_error(tmp_path: Path) -> None:
    done = run_invoke("unsplice", cache=tmp_path)
    assert done.code == 1 and "did not receive required positional arguments: 'id'" in done.out
