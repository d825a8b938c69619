"""Build TorchServe archives (.mar) from Tessera checkpoints or MLflow model versions.

The archive holds the plain-dict checkpoint (``serializedFile``), the handler for its kind (chosen
from the checkpoint's ``arch``) and a ``model-config.yaml`` with TorchServe's batching and worker
settings plus the handler's own caps (``handler:`` section). The archive's version is the MLflow
model version, so TorchServe's versions and the registry's are the same numbers.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tessera.errors import TesseraError

HANDLERS = Path(__file__).resolve().parent / "handlers"
KINDS = {"encoder": "encoder.py", "ttt_classifier": "ttt_classifier.py", "generator": "generator.py"}
TTT_ARCH, GENERATOR_ARCH = "ttt_mae_classifier", "icgan"


@dataclass(frozen=True)
class Config:
    """params.yaml section ``serve``: how archives are built and how TorchServe runs them."""

    batch_size: int = 8  # requests TorchServe batches into one handler call (batchSize)
    max_batch_delay_ms: int = 5  # how long TorchServe waits to fill a batch (maxBatchDelay)
    min_workers: int = 1  # worker processes per model version (minWorkers)
    max_workers: int = 1  # upper bound when scaling (maxWorkers)
    torch_threads: int = 0  # intra-op threads per CPU worker (0: tessera.threads' rule over max_workers)
    response_timeout_s: int = 120  # a batch taking longer restarts the worker (responseTimeout)
    # requests waiting for a worker (jobQueueSize); beyond, a 503 at once, so a burst of long
    # test-time adaptations cannot make every later request wait (TorchServe's default: 100)
    job_queue_size: int = 100
    ttt_job_queue_size: int = 8  # the same for the TTT classifier, whose requests are the long ones
    max_images: int = 16  # images in one request; more is a 413
    max_pixels: int = 4096 * 4096  # decoded pixels per image; more is a 413 (decompression bombs)
    ttt_steps: int = -1  # default TTT steps per request (-1: the checkpoint's extra["ttt"])
    ttt_copies: int = -1  # default augmented copies per image (-1: the checkpoint's)
    ttt_max_steps: int = 50  # cap on the per-request ``steps`` option
    ttt_max_copies: int = 64  # cap on the per-request ``copies`` option
    ttt_online: bool = False  # keep adapting along the request stream instead of per request
    ttt_reset_every: int = 0  # online: reset to the deployed weights every N images (0: never)
    generator_max_samples: int = 16  # cap on the per-request ``n`` samples


class PackageError(TesseraError):
    """An archive could not be built."""


def kind_of(arch: str) -> str:
    """Which handler serves a checkpoint of ``arch``: ``encoder``, ``ttt_classifier`` or ``generator``."""
    if arch == TTT_ARCH:
        return "ttt_classifier"
    if arch == GENERATOR_ARCH:
        return "generator"
    return "encoder"


def model_config(cfg: Config, kind: str) -> dict[str, Any]:
    """The archive's ``model-config.yaml``: TorchServe's keys plus the handler's ``handler:`` section."""
    handler: dict[str, Any] = {"max_images": cfg.max_images, "max_pixels": cfg.max_pixels}
    if cfg.torch_threads > 0:
        handler["torch_threads"] = cfg.torch_threads
    if kind == "ttt_classifier":
        handler.update(
            max_steps=cfg.ttt_max_steps,
            max_copies=cfg.ttt_max_copies,
            online=cfg.ttt_online,
            reset_every=cfg.ttt_reset_every,
        )
        if cfg.ttt_steps >= 0:
            handler["steps"] = cfg.ttt_steps
        if cfg.ttt_copies > 0:
            handler["copies"] = cfg.ttt_copies
    if kind == "generator":
        handler["max_samples"] = cfg.generator_max_samples
    return {
        "minWorkers": cfg.min_workers,
        "maxWorkers": cfg.max_workers,
        "batchSize": cfg.batch_size,
        "maxBatchDelay": cfg.max_batch_delay_ms,
        "responseTimeout": cfg.response_timeout_s,
        "jobQueueSize": cfg.ttt_job_queue_size if kind == "ttt_classifier" else cfg.job_queue_size,
        "handler": handler,
    }


def archive_name(name: str, version: str | int) -> str:
    """The file name of version ``version`` of ``name`` in the model store."""
    return f"{name}.v{version}.mar"


def package(
    checkpoint_path: str | Path,
    name: str,
    version: str | int,
    store: str | Path,
    cfg: Config | None = None,
    inpaint_model: str | Path | None = None,
) -> Path:
    """Build ``store/<name>.v<version>.mar`` from a checkpoint with torch-model-archiver.

    ``inpaint_model``: for a generator, the MAE checkpoint (raw pixels) that serves inpainting;
    it travels in the archive as ``mae.pt``.
    """
    from tessera import checkpoint

    cfg = cfg or Config()
    ckpt_path = Path(checkpoint_path).resolve()
    kind = kind_of(checkpoint.load(ckpt_path)["arch"])
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tessera-mar-") as tmp:
        conf = Path(tmp) / "model-config.yaml"
        conf.write_text(yaml.safe_dump(model_config(cfg, kind), sort_keys=False))
        # the archive names its checkpoint model.pt whatever the source file was called
        serialized = Path(tmp) / "model.pt"
        shutil.copyfile(ckpt_path, serialized)
        extra = []
        if inpaint_model is not None:
            if kind != "generator":
                raise PackageError("--inpaint-model goes with a generator checkpoint only")
            shutil.copyfile(inpaint_model, Path(tmp) / "mae.pt")
            extra = ["--extra-files", str(Path(tmp) / "mae.pt")]
        archiver = Path(sys.executable).parent / "torch-model-archiver"
        cmd = [
            str(archiver) if archiver.exists() else "torch-model-archiver",
            "--model-name",
            name,
            "--version",
            str(version),
            "--serialized-file",
            str(serialized),
            "--handler",
            str(HANDLERS / KINDS[kind]),
            "--config-file",
            str(conf),
            "--export-path",
            tmp,
            "--archive-format",
            "default",
            "--force",
            *extra,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PackageError(f"torch-model-archiver failed: {done.stderr.strip()[-2000:]}")
        out = store / archive_name(name, version)
        shutil.move(str(Path(tmp) / f"{name}.mar"), out)
    return out


def package_uri(
    uri: str, store: str | Path, cfg: Config | None = None, inpaint_model: str | None = None
) -> tuple[Path, str, str]:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> (archive, name, version) via the registry.

    A generator is packaged with the MAE of its own release for inpainting unless ``inpaint_model``
    (a checkpoint path or another model URI) says otherwise.
    """
    from lifecycle import release

    with tempfile.TemporaryDirectory(prefix="tessera-ckpt-") as tmp:
        ref = release.resolve(uri, Path(tmp) / "model")
        mae = inpaint_model
        if mae is None and kind_of_name(ref.name) == "generator":
            mae = release.sibling(ref, "encoder")
        if mae is not None and mae.startswith("models:/"):
            mae = str(release.resolve(mae, Path(tmp) / "mae").path)
        mar = package(ref.path, ref.name, ref.version, store, cfg, inpaint_model=mae)
    return mar, ref.name, ref.version


def kind_of_name(name: str) -> str:
    """The handler kind of a registered bundle name (tessera-encoder, -ttt-classifier, -generator)."""
    from tessera.names import BUNDLES

    return {BUNDLES["classifier"]: "ttt_classifier", BUNDLES["generator"]: "generator"}.get(name, "encoder")


def config_from_params(params: dict[str, Any]) -> Config:
    """The ``serve`` section of params.yaml (unknown keys are an error)."""
    from tessera.config import section_of

    return section_of(Config, params, "serve")
