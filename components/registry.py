"""The MLflow model registry: Tessera's three bundles, releases and aliases.

Every bundle is one MLflow ``pyfunc`` model whose only artifact is the plain-dict checkpoint
(``tessera.checkpoint``); loading it rebuilds the model through ``tessera.models.registry`` so the
module keeps its methods (``forward_encoder``, TTT, sampling), not a traced graph:

- ``tessera-encoder``: the MAE (encoder + decoder), ``predict`` returns embeddings (``embed()``);
- ``tessera-ttt-classifier``: MAE + head + class names + TTT defaults;
- ``tessera-generator``: generator + its encoder + the bank of training embeddings.

A *release* is the set of bundles one retrain run produced; its id is the flow's parent MLflow run
id, stored as the ``release`` tag on every version. Aliases (stages are deprecated): ``challenger``
on a freshly registered release, ``champion`` on the release in service; both move for a whole
release at once (see ``components/promotion.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel

BUNDLES = {
    "encoder": "tessera-encoder",
    "classifier": "tessera-ttt-classifier",
    "generator": "tessera-generator",
}
ANCHOR = "classifier"  # the bundle the promotion gate judges; the others follow it
CHAMPION, CHALLENGER = "champion", "challenger"
CHECKPOINT_ARTIFACT = "checkpoint"


def _register_architectures() -> None:
    """Import the modules that register non-MAE architectures (TTT classifier, IC-GAN) if present."""
    import importlib

    for module in ("tessera.adapt", "tessera.adapt.heads", "tessera.generators"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


class CheckpointBundle(PythonModel):
    """A pyfunc around one Tessera checkpoint, rebuilt through the library's model registry.

    After ``mlflow.pyfunc.load_model(uri)``, ``unwrap_python_model()`` gives this object:
    ``.model`` is the ``nn.Module`` (methods intact), ``.checkpoint`` the plain dict.
    """

    # ``predict`` has no type hints on purpose (MLflow would infer a signature from them); this is
    # MLflow's own switch (PythonModel.__init_subclass__) to skip hint-based validation, and with it
    # the "Add type hints to the `predict` method" warning on every import.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from tessera import checkpoint
        from tessera.models.registry import from_checkpoint

        _register_architectures()
        self.checkpoint = checkpoint.load(context.artifacts[CHECKPOINT_ARTIFACT])
        self.model = from_checkpoint(self.checkpoint).eval()

    def predict(self, context, model_input, params=None):  # no hints: MLflow would infer a signature
        """Images (N, 3, H, W) in [0, 1] -> embeddings (encoder) or class probabilities (classifier);
        for a generator, the number of samples -> images (N, 3, H, W)."""
        import numpy as np
        import torch

        from tessera.models.embed import embed

        model = self.model
        with torch.no_grad():
            if hasattr(model, "sample") and not hasattr(model, "forward_encoder"):
                n = int(np.asarray(model_input).reshape(-1)[0])
                return model.sample(n, seed=int((params or {}).get("seed", 0))).cpu().numpy()
            x = torch.as_tensor(np.asarray(model_input), dtype=torch.float32)  # (N, 3, H, W)
            if self.checkpoint.get("classes"):
                logits = model(x)
                logits = logits[0] if isinstance(logits, tuple) else logits  # (N, classes)
                return torch.softmax(logits, dim=-1).cpu().numpy()
            return embed(model, x).numpy()  # (N, D)


def _pip_requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}", "tessera"]


def log_bundle(client: Any, run_id: str, kind: str, ckpt_path: str | Path) -> str:
    """Save the checkpoint as a pyfunc model under the run's ``bundles/<kind>``; returns its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / kind
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(Path(__file__).with_name("bundle_model.py")),
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt_path)},
            pip_requirements=_pip_requirements(),
            infer_code_paths=False,
            metadata={"tessera_bundle": BUNDLES[kind]},
        )
        client.log_artifacts(run_id, str(local), f"bundles/{kind}")
    return f"{client.get_run(run_id).info.artifact_uri}/bundles/{kind}"


def register_release(
    client: Any, release: str, checkpoints: Mapping[str, str | Path], tags: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """Register one version per bundle from run ``release`` and alias them all ``challenger``.

    Returns ``{kind: version}``. ``tags`` (data version, params and code hashes, git commit) are set
    on every version, with ``release`` and ``bundle``.
    """
    from mlflow.exceptions import MlflowException

    versions: dict[str, str] = {}
    for kind, path in checkpoints.items():
        name = BUNDLES[kind]
        source = log_bundle(client, release, kind, path)
        with contextlib.suppress(MlflowException):  # already registered
            client.create_registered_model(name, description=f"Tessera {kind} bundle")
        all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, "release": release, "bundle": kind}
        mv = client.create_model_version(name, source, run_id=release, tags=all_tags)
        versions[kind] = str(mv.version)
    for kind, version in versions.items():
        client.set_registered_model_alias(BUNDLES[kind], CHALLENGER, version)
    return versions


def version_by_alias(client: Any, kind: str, alias: str) -> Any | None:
    """The model version holding ``alias`` for bundle ``kind``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(BUNDLES[kind], alias)
    except MlflowException:
        return None


def release_of(client: Any, alias: str = CHAMPION) -> str | None:
    """The release id (parent run id) currently holding ``alias`` on the anchor bundle."""
    mv = version_by_alias(client, ANCHOR, alias)
    return None if mv is None else str(mv.tags.get("release") or mv.run_id)


def release_versions(client: Any, release: str) -> dict[str, Any]:
    """``{kind: ModelVersion}`` for every bundle registered from run ``release``."""
    out: dict[str, Any] = {}
    for kind, name in BUNDLES.items():
        found = client.search_model_versions(f"name = '{name}' and run_id = '{release}'")
        if found:
            out[kind] = max(found, key=lambda mv: int(mv.version))
    return out


def release_metrics(client: Any, release: str) -> dict[str, float]:
    """The evaluation metrics logged on the release's run (the keys of evaluate's metrics.json)."""
    return dict(client.get_run(release).data.metrics)


def load_bundle(client: Any, kind: str, ref: str | int = CHAMPION) -> Any:
    """Load bundle ``kind`` at alias or version ``ref`` as a pyfunc model (no global MLflow state)."""
    import mlflow.artifacts

    name, ref = BUNDLES[kind], str(ref)
    version = ref if ref.isdigit() else client.get_model_version_by_alias(name, ref).version
    uri = client.get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp())
    return mlflow.pyfunc.load_model(local)


def download_checkpoint(client: Any, kind: str, ref: str | int, dst: str | Path) -> Path:
    """Copy the checkpoint of bundle ``kind`` at alias/version ``ref`` to folder ``dst``."""
    import mlflow.artifacts

    name, ref = BUNDLES[kind], str(ref)
    version = ref if ref.isdigit() else client.get_model_version_by_alias(name, ref).version
    uri = client.get_model_version_download_uri(name, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts", dst_path=str(dst)))
    files = [p for p in local.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise FileNotFoundError(f"{name} v{version}: expected one checkpoint file, found {files}")
    return files[0]


def describe(client: Any) -> list[dict[str, Any]]:
    """Every version of every bundle, newest first, with aliases and the tags people look at."""
    rows = []
    for kind, name in BUNDLES.items():
        for mv in client.search_model_versions(f"name = '{name}'"):
            rows.append(
                {
                    "model": name,
                    "version": int(mv.version),
                    "aliases": list(mv.aliases),
                    "release": mv.tags.get("release", mv.run_id),
                    "data_version": mv.tags.get("data_version", ""),
                    "decision": mv.tags.get("promotion.decision", ""),
                    "created": mv.creation_timestamp,
                    "kind": kind,
                }
            )
    return sorted(rows, key=lambda r: (r["model"], -r["version"]))


def tags_json(mv: Any) -> str:
    """A version's tags as indented JSON (for ``tessera registry show``)."""
    return json.dumps(dict(mv.tags), indent=2, sort_keys=True)


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """A registered bundle's checkpoint on local disk, with the version facts serving needs."""

    path: Path
    name: str
    version: str
    data_version: str
    release: str


def checkpoint_of(uri: str, client: Any = None, dst: str | Path | None = None) -> CheckpointRef:
    """``models:/NAME@alias`` or ``models:/NAME/VERSION`` -> the bundle's checkpoint on local disk."""
    from components import tracking

    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r}: expected models:/NAME@alias or models:/NAME/VERSION")
    body = uri.removeprefix("models:/")
    name, _, ref = body.partition("@") if "@" in body else body.partition("/")
    kinds = {v: k for k, v in BUNDLES.items()}
    if name not in kinds or not ref:
        raise ValueError(f"{uri!r}: NAME must be one of {sorted(kinds)} with an @alias or /version")
    client = client or tracking.client()
    mv = (
        client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)
    )
    dst = Path(dst) if dst is not None else tracking.workspace() / "checkpoints" / name / str(mv.version)
    path = download_checkpoint(client, kinds[name], str(mv.version), dst)
    return CheckpointRef(
        path, name, str(mv.version), mv.tags.get("data_version", ""), mv.tags.get("release", mv.run_id or "")
    )


def release_from_files(
    mlflow_cfg: Any,
    params: Mapping[str, Any],
    data_dir: str | Path,
    checkpoints: Mapping[str, str | Path],
    evaluation: Mapping[str, float],
    run_name: str = "release",
) -> tuple[str, dict[str, str]]:
    """Record a release made outside the Prefect flow (Kubeflow, a person): one MLflow run with the
    params, the dataset input, the evaluation metrics, then the bundles as ``challenger``."""
    import hashlib

    from components import tracking

    try:
        from components import lineage

        version = dict(lineage.data_version(data_dir))
    except Exception:  # not DVC-tracked here (e.g. a KFP artifact copy): say so rather than guess
        version = {"md5": "unversioned", "files": 0, "size": 0}
    client = tracking.client(mlflow_cfg)
    params_hash = hashlib.sha256(
        json.dumps(
            {k: params.get(k) for k in ("data", "pretrain", "generator", "adapt", "evaluate")},
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    tags = {
        "data_version": version["md5"],
        "params_hash": params_hash,
        "git_commit": tracking.git_commit(Path(__file__).resolve().parents[1]),
    }
    run_id = tracking.start_run(client, tracking.experiment_id(client, mlflow_cfg), run_name, tags=tags)
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params(params)
    tracker.log_dataset(version, data_dir, name=Path(data_dir).name)
    tracker.log_metrics(dict(evaluation), step=0)
    versions = register_release(client, run_id, checkpoints, tags)
    client.set_terminated(run_id)
    return run_id, versions
