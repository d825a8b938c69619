"""The training Dockerfiles, checked without a Docker engine: every file they copy exists in the
build context (the repository root) and the entry point + default command is a real command."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["infra/docker/train.Dockerfile", "infra/docker/train-cpu.Dockerfile"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_every_copied_file_exists(dockerfile: str) -> None:
    copies = [args for word, args in instructions(ROOT / dockerfile) if word in ("COPY", "ADD")]
    assert copies, "no COPY instruction"
    missing = []
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        assert "--from" not in args, "multi-stage copies are not checked here"
        missing += [src for src in parts[:-1] if not (ROOT / src).exists()]
    assert missing == [], f"{dockerfile} copies files that do not exist: {missing}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_entry_point_is_a_real_command(dockerfile: str) -> None:
    steps = dict(instructions(ROOT / dockerfile))
    assert steps["FROM"].split(":")[0] in {"nvidia/cuda", "python"}
    entry, cmd = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entry == ["python", "-m"]
    module, options = cmd[0], cmd[1:]
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    # the default command's options are accepted by the module's own parser (an unknown option
    # exits 2 before --help is honoured), and the module runs
    res = subprocess.run(
        [sys.executable, "-m", module, *options, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "--params" in res.stdout and "--data" in res.stdout
