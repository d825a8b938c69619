"""infra/ cannot run here (no Docker engine, no cluster): check what can be checked without them.

Compose and the Kubernetes manifests parse; every executable they start is installed; every
``tessera`` subcommand, ``python -m`` module, prefect.yaml entrypoint and file they name exists.
"""

from __future__ import annotations

import importlib
import re
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXTERNAL = {"sh", "pg_isready"}  # provided by the base images


def _tessera_paths() -> set[tuple[str, ...]]:
    import typer.main

    from cli.main import app

    out: set[tuple[str, ...]] = set()

    def walk(cmd, path: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
        out.add(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return out


def _check_command(argv: list[str], tessera: set[tuple[str, ...]]) -> None:
    exe = argv[0]
    if exe == "sh":
        for part in argv[-1].replace("||", ";").split(";"):
            if part.strip() and part.strip() != "true":
                _check_command(shlex.split(part), tessera)
        return
    assert exe in EXTERNAL or (BIN / exe).exists(), f"{exe} is not installed in the environment"
    if exe == "tessera":
        words = tuple(w for w in argv[1:] if not w.startswith("-"))
        assert any(words[: len(p)] == p and p for p in tessera if len(p) >= 2), argv
    if exe == "python" and argv[1:2] == ["-m"]:
        importlib.import_module(argv[2])


def test_compose_parses_and_references_real_commands_and_files() -> None:
    spec = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    tessera = _tessera_paths()
    assert {"postgres", "mlflow", "prefect", "worker", "torchserve"} <= set(spec["services"])
    assert (ROOT / spec["x-tessera-image"]["build"]["dockerfile"]).is_file()
    for name, svc in spec["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (ROOT / "infra" / src).exists() or src == "../data", (name, src)
        if "entrypoint" in svc:
            argv = [*svc["entrypoint"], *svc.get("command", [])]
            if argv[0] == "sh":
                argv = [argv[0], argv[1], " ".join(svc["command"])]
            _check_command(argv, tessera)
            for arg in argv:
                if arg.startswith(("serving/", "infra/")):
                    assert (ROOT / arg).exists(), (name, arg)


def test_kubernetes_manifests_parse_and_reference_real_commands() -> None:
    kinds = []
    tessera = _tessera_paths()
    for path in sorted((ROOT / "infra" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.append(doc["kind"])
            assert doc["apiVersion"] and doc["metadata"]["name"].startswith("tessera")
            if doc["kind"] == "Deployment":
                pod = doc["spec"]["template"]["spec"]
                assert (
                    doc["spec"]["selector"]["matchLabels"].items()
                    <= doc["spec"]["template"]["metadata"]["labels"].items()
                )
                for c in pod["containers"]:
                    _check_command([*c["command"], *c.get("args", [])], tessera)
                    for arg in c.get("args", []):
                        if arg.startswith("serving/"):
                            assert (ROOT / arg).exists(), arg
    assert kinds.count("Deployment") == 3 and "Service" in kinds


def test_prefect_yaml_entrypoints_exist_and_retrain_is_on_a_cron_schedule() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        module, _, attr = d["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert d["work_pool"]["name"] == "tessera-process"
        assert set(d.get("parameters", {})) <= set(flow.parameters.properties)
    retrain = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":retrain"))
    assert retrain["schedules"][0]["cron"].count(" ") == 4


def test_kfp_yaml_runs_project_modules() -> None:
    spec = yaml.safe_load((ROOT / "infra" / "kfp" / "retrain.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"].values()
    commands = [ex["container"]["command"] for ex in executors if "container" in ex]
    steps = [c[2] for c in commands if c[:2] == ["python", "-m"]]
    assert sorted(steps) == sorted(
        f"components.{s}" for s in ("pretrain", "train_generator", "adapt", "evaluate")
    )
    for module in steps:
        importlib.import_module(module)
    reg = spec["deploymentSpec"]["executors"]["exec-register"]["container"]
    assert reg["command"] == ["tessera", "registry"]  # the registration is the CLI's (lifecycle adapters)
    assert reg["args"][0] in {c for p in _tessera_paths() if p[:1] == ("registry",) for c in p[1:]}
    pretrain = spec["deploymentSpec"]["executors"]["exec-pretrain"]["container"]
    assert "--data-version" in pretrain["args"]  # the pipeline parameter reaches the step


def test_the_wheel_carries_the_files_the_code_reads_at_run_time(tmp_path: Path) -> None:
    """A non-editable install (the Docker images) needs TorchServe's configs and the handlers."""
    import shutil
    import subprocess
    import zipfile

    # build from a copy of the sources: an in-tree build would leave build/ (stale code) in the checkout
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    caches = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("src", "components", "flows", "serving"):
        shutil.copytree(ROOT / name, src / name, ignore=caches)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src)]
        + ["-w", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("tessera-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in sorted((ROOT / "serving" / "config").iterdir()) + sorted(
        (ROOT / "serving" / "handlers").glob("*.py")
    ):
        assert f.relative_to(ROOT).as_posix() in names, f"{f.name} is not in the wheel"


def _torchserve_runner_args(argv: list[str]):  # type: ignore[no-untyped-def]
    """The options of a ``python -m serving.server`` command line, parsed by its own parser."""
    from serving import server

    assert argv[:3] == ["python", "-m", "serving.server"], argv
    return server.arg_parser().parse_args(argv[3:])


def test_torchserve_manifest_probes_the_token_free_health_endpoint() -> None:
    """The pod runs the runner (render, start, restore, health) and every probe asks its /ping."""
    docs = list(yaml.safe_load_all((ROOT / "infra" / "k8s" / "torchserve.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = _torchserve_runner_args([*container["command"], *container["args"]])
    assert args.config == "production" and args.host == "0.0.0.0" and args.health_host == "0.0.0.0"
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(str(args.home).startswith(m) for m in mounts), "the home (registered.json) is on the PVC"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert ports["health"] == args.health_port and ports["inference"] == args.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/ping" and ports.get(get["port"], get["port"]) == args.health_port, probe
    service = next(d for d in docs if d["kind"] == "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [args.port]  # health stays in the cluster


def test_compose_torchserve_runs_the_runner_with_the_production_config() -> None:
    svc = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())["services"]["torchserve"]
    args = _torchserve_runner_args([*svc["entrypoint"], *svc["command"]])
    assert args.config == "production" and args.home.as_posix() == "/workspace/.tessera/serving"
    assert f":{args.health_port}/ping" in " ".join(svc["healthcheck"]["test"])


def test_torchserve_production_config_only_registers_from_the_model_store(tmp_path: Path) -> None:
    from serving import server

    template = server.CONFIGS["production"].read_text()
    assert "disable_token_authorization=false" in template
    assert "allowed_urls=file://.*" not in template
    srv = server.Server(tmp_path / "home", server.Ports(), "production")
    srv.home.mkdir()
    rendered = server.render_config(server.CONFIGS["production"], srv).read_text().splitlines()
    (line,) = [ln for ln in rendered if ln.startswith("allowed_urls=")]
    value = line.split("=", 1)[1].replace("\\\\", "\\")  # a .properties file doubles backslashes
    assert value == server.allowed_urls(srv.model_store)
    assert re.fullmatch(value, f"file://{srv.model_store}/tessera-encoder.v1.mar")
    assert not re.fullmatch(value, f"file://{tmp_path}/tessera-encoder.v1.mar")
