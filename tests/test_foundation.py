"""The project's standing rules: a library free of orchestrators, strict configs, safe checkpoints,
and a command line whose every subcommand answers --help."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tessera import checkpoint
from tessera.config import ConfigError, from_section, load_params
from tessera.errors import CheckpointError
from tessera.models import build, from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"prefect", "kfp", "mlflow", "ts", "dvc", "dvc_data"}
FORBIDDEN |= {"components", "lifecycle", "flows", "serving", "cli"}  # the layers above the library


def test_library_imports_no_orchestrator() -> None:
    offenders = []
    for path in (ROOT / "src" / "tessera").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


@dataclasses.dataclass(frozen=True)
class _Cfg:
    epochs: int = 1  # how many passes
    lr: float = 1e-3


def test_config_refuses_unknown_keys_by_name() -> None:
    assert from_section(_Cfg, {"epochs": 3, "lr": 1}, "demo") == _Cfg(3, 1.0)
    with pytest.raises(ConfigError, match="epochz"):
        from_section(_Cfg, {"epochz": 3}, "demo")
    with pytest.raises(ConfigError, match="expected int"):
        from_section(_Cfg, {"epochs": "three"}, "demo")


def test_presets_overlay_the_active_params() -> None:
    base = load_params(ROOT / "params.yaml")
    for preset in ("cpu", "gpu"):
        merged = load_params(ROOT / "params.yaml", preset=preset)
        assert set(base) <= set(merged)
    with pytest.raises(ConfigError, match="preset"):
        load_params(ROOT / "params.yaml", preset="nope")


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    model = build("mae_vit_micro_patch4")
    ckpt = checkpoint.make("mae_vit_micro_patch4", {}, model.state_dict(), step=7)
    path = checkpoint.save(ckpt, tmp_path / "m.pt")
    loaded = checkpoint.load(path, arch="mae_vit_micro_patch4")
    rebuilt = from_checkpoint(loaded)
    x = torch.rand(2, 3, 32, 32)
    noise = torch.rand(2, 64)
    model.eval()
    rebuilt.eval()
    assert torch.equal(model(x, noise=noise)[0], rebuilt(x, noise=noise)[0])
    with pytest.raises(CheckpointError, match="expected 'mae_vit_tiny_patch4'"):
        checkpoint.load(path, arch="mae_vit_tiny_patch4")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load(bad)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


def _commands(prefix: list[str]) -> list[list[str]]:
    import typer.main

    from cli.main import app

    click_app = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        out.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(click_app, prefix)
    return out


def test_every_subcommand_has_help() -> None:
    from typer.testing import CliRunner

    from cli.main import app

    runner = CliRunner()
    commands = _commands([])
    assert len(commands) > 25
    for path in commands:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output


def test_console_script_runs() -> None:
    exe = Path(sys.executable).parent / "tessera"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "pretrain" in result.stdout


def test_readme_references_are_current() -> None:
    """README's command and configuration references and the docs' settings tables are generated from
    the code (docs/reference.py): never stale."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "reference.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_quickstart_has_exactly_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]


def test_shared_names_load_without_torch_and_have_one_source() -> None:
    """Names and defaults live in tessera.names alone; the steps' configs read it without torch."""
    code = (
        "import sys; import tessera.names, components.data, components.evaluate, components.adapt;"
        "import components.pretrain, cli.main;"
        "print(sorted(m for m in ('torch', 'numpy', 'mlflow', 'prefect') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
    from components import adapt, data, evaluate
    from lifecycle import registry
    from tessera import corruptions, names
    from tessera.adapt import evaluation
    from tessera.adapt.test_time import TTTSettings

    assert data.CorruptConfig().corruptions is names.CORRUPTIONS is corruptions.CORRUPTIONS
    assert evaluate.ALL_METHODS is names.EVAL_METHODS is evaluation.METHODS
    assert registry.BUNDLES is names.BUNDLES
    ttt = TTTSettings()
    assert (ttt.steps, ttt.copies, ttt.lr, ttt.momentum, ttt.mask_ratio) == tuple(
        names.TTT_DEFAULTS[k] for k in ("steps", "copies", "lr", "momentum", "mask_ratio")
    )
    assert adapt.ttt_defaults(adapt.Config()) == names.TTT_DEFAULTS


def test_cpu_tests_see_no_gpu(request: pytest.FixtureRequest) -> None:
    """tests/conftest.py hides the GPU from every test not marked gpu (and from what they start) ..."""
    import os

    assert "gpu" not in request.keywords
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "" and not torch.cuda.is_available()


@pytest.mark.gpu
def test_gpu_tests_see_the_gpu() -> None:
    """... and shows it to the gpu-marked ones (skipped where there is none, as in CI)."""
    import os

    assert torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") != ""
    assert torch.zeros(1, device="cuda").device.type == "cuda"
