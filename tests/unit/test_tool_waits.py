"""Under `make test` a test may run only the pinned tools it waited for (tests/conftest.py
waits for them before its timeout starts): pinned_tool refuses any other group of the
background build, built or not, so that a missing `tools` mark fails every run rather
than only a cold one."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest

from qsys_testkit.checkout import (
    AWAITED_ENV,
    SIDE_RUN_ENV,
    awaiting_tools,
    pinned_tool,
    wait_for_side_run,
)


@pytest.fixture
def building(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QSYS_TOOLS_STATUS", str(tmp_path))
    monkeypatch.setenv("QSYS_TOOL_GROUPS", "kube helm")
    monkeypatch.delenv(AWAITED_ENV, raising=False)


@pytest.mark.usefixtures("building")
def test_a_group_the_test_did_not_wait_for_is_refused() -> None:
    with awaiting_tools({"helm"}), pytest.raises(FileNotFoundError) as info:
        pinned_tool("kube", "kubectl")
    assert "mark it `@pytest.mark.tools('kube')`" in str(info.value)
    with awaiting_tools(set()), pytest.raises(FileNotFoundError, match="did not wait"):
        pinned_tool("helm", "helm")


@pytest.mark.usefixtures("building")
def test_awaiting_tools_sets_the_groups_for_subprocesses_and_restores_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with awaiting_tools({"kube", "helm"}):
        assert os.environ[AWAITED_ENV] == "helm kube"
        with awaiting_tools({"kube"}):
            assert os.environ[AWAITED_ENV] == "kube"
        assert os.environ[AWAITED_ENV] == "helm kube"
    assert AWAITED_ENV not in os.environ
    monkeypatch.setenv(AWAITED_ENV, "x")
    with awaiting_tools(()):
        assert os.environ[AWAITED_ENV] == ""
    assert os.environ[AWAITED_ENV] == "x"


def test_the_side_run_is_awaited_until_it_ends_or_its_process_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    done = tmp_path / "side.done"
    monkeypatch.setenv(SIDE_RUN_ENV, str(done))
    finished = subprocess.Popen(["true"])
    finished.wait()
    (tmp_path / "side.pid").write_text(str(finished.pid))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wait_for_side_run(timeout=5)  # its process is gone: no wait, no warning
    done.touch()
    (tmp_path / "side.pid").write_text(str(os.getpid()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wait_for_side_run(timeout=5)


def test_a_side_run_that_does_not_end_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SIDE_RUN_ENV, str(tmp_path / "side.done"))
    (tmp_path / "side.pid").write_text(str(os.getpid()))  # alive, never done
    with pytest.warns(UserWarning, match="had not ended after 1s"):
        wait_for_side_run(timeout=1)
