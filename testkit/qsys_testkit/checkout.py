"""Helpers for this repository's own tests, benchmarks and demo: the pinned tools that
hack/tools builds into $QSYS_TOOLS_CACHE and the images `make images` builds. They need a
checkout of the repository (an editable install); users' CI does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tool_dir(group: str) -> Path:
    """Bin directory of the pinned tool group hack/tools/GROUP (built or not)."""
    out = subprocess.run(  # noqa: S603 - fixed argv of this repository's script
        ["bash", str(REPO / "hack" / "tools" / "build.sh"), "--dir", group],  # noqa: S607
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def pinned_tool(group: str, name: str) -> Path:
    """A built binary of hack/tools/GROUP; raises (a test fails, never skips) when missing."""
    path = tool_dir(group) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name} is not built ({path} missing): run `make cluster-tools` "
            f"(or `bash hack/tools/build.sh {group}`)"
        )
    return path


def image_names() -> dict[str, str]:
    """Component (operator, gateway, core-sim, pause) -> image reference (`make images`)."""
    out = subprocess.run(  # noqa: S603 - fixed argv of this repository's script
        [sys.executable, str(REPO / "hack" / "images.py"), "names"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    ).stdout.split()
    return {ref.rsplit("/", 1)[-1].split(":", 1)[0]: ref for ref in out}
