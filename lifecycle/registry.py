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
release at once (see ``lifecycle/promotion.py``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel

from tessera.errors import CheckpointError
from tessera.names import BUNDLES

ANCHOR = "classifier"  # the bundle the promotion gate judges; the others follow it
CHAMPION, CHALLENGER = "champion", "challenger"
CHECKPOINT_ARTIFACT = "checkpoint"


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

    Returns ``{kind: version}``. ``tags`` (params and code hashes, git commit) are set on every
    version, with ``release``, ``bundle`` and ``data_version``: a copy of the md5 stamped in that
    bundle's checkpoint (a checkpoint without one, or one that disagrees with ``tags["data_version"]``,
    is refused with :class:`CheckpointError`).
    """
    from mlflow.exceptions import MlflowException

    stamped = {kind: stamped_data_version(path) for kind, path in checkpoints.items()}
    given = (tags or {}).get("data_version")
    for kind, md5 in stamped.items():
        if given and md5 != given:
            raise CheckpointError(
                f"the {kind} checkpoint {checkpoints[kind]} was trained on data {md5}, not on the "
                f"release's {given}: retrain it on the release's data"
            )
    versions: dict[str, str] = {}
    for kind, path in checkpoints.items():
        name = BUNDLES[kind]
        source = log_bundle(client, release, kind, path)
        with contextlib.suppress(MlflowException):  # already registered
            client.create_registered_model(name, description=f"Tessera {kind} bundle")
        all_tags = {
            **{k: str(v) for k, v in (tags or {}).items()},
            "data_version": stamped[kind],  # a copy of the checkpoint's: serving reads the checkpoint
            "release": release,
            "bundle": kind,
        }
        mv = client.create_model_version(name, source, run_id=release, tags=all_tags)
        versions[kind] = str(mv.version)
    for kind, version in versions.items():
        client.set_registered_model_alias(BUNDLES[kind], CHALLENGER, version)
    return versions


def stamped_data_version(path: str | Path) -> str:
    """The DVC md5 stamped in a checkpoint; :class:`CheckpointError` when it has none."""
    from tessera import checkpoint

    version = checkpoint.load(path).get("data_version")
    md5 = version.get("md5") if isinstance(version, dict) else version
    if not md5:
        raise CheckpointError(
            f"{path} carries no data version: a registered model must say which data it saw "
            "(retrain it with `tessera <step>` or the retrain flow, which stamp it)"
        )
    return str(md5)


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
    """Every version of every bundle, newest first, with aliases and the tags people look at.

    The aliases come from the registered model: ``search_model_versions`` leaves a version's
    ``aliases`` empty (only ``get_model_version`` fills it), which showed no champion in the list.
    """
    from mlflow.exceptions import MlflowException

    rows = []
    for kind, name in BUNDLES.items():
        try:
            by_version: dict[str, list[str]] = {}
            for alias, version in (client.get_registered_model(name).aliases or {}).items():
                by_version.setdefault(str(version), []).append(alias)
        except MlflowException:  # not registered yet
            continue
        for mv in client.search_model_versions(f"name = '{name}'"):
            rows.append(
                {
                    "model": name,
                    "version": int(mv.version),
                    "aliases": sorted(by_version.get(str(mv.version), [])),
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


def release_from_files(
    mlflow_cfg: Any,
    params: Mapping[str, Any],
    data_dir: str | Path,
    checkpoints: Mapping[str, str | Path],
    evaluation: Mapping[str, Any],
    run_name: str = "release",
) -> tuple[str, dict[str, str]]:
    """Record a release made outside the Prefect flow (Kubeflow, a person): one MLflow run with the
    params, the dataset input, the evaluation metrics, then the bundles as ``challenger``.

    ``evaluation`` (evaluate's metrics.json) is checked against the classifier first
    (:func:`lifecycle.verify.verify`: its weights digest, finite numbers, a clean spot check on
    ``data_dir``'s test split); :class:`lifecycle.verify.EvaluationRejected` when it fails.
    """
    import hashlib

    from lifecycle import tracking
    from lifecycle.promotion import Config as PromoteConfig
    from lifecycle.verify import verify
    from tessera.config import section_of

    gate = section_of(PromoteConfig, params, "promote")
    verified = verify(checkpoints["classifier"], evaluation, data_dir, gate)
    numbers = {
        k: float(v) for k, v in evaluation.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }

    # The data version travels in the checkpoints (a KFP artifact copy of the data is not DVC-tracked).
    from tessera import checkpoint

    version = checkpoint.load(checkpoints[ANCHOR]).get("data_version")
    if not isinstance(version, dict) or not version.get("md5"):
        version = {"md5": stamped_data_version(checkpoints[ANCHOR])}  # raises when there is none
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
        "evaluation.verified": verified,
    }
    run_id = tracking.start_run(client, tracking.experiment_id(client, mlflow_cfg), run_name, tags=tags)
    tracker = tracking.MlflowTracker(client, run_id)
    tracker.log_params(params)
    tracker.log_dataset(version, data_dir, name=Path(data_dir).name)
    tracker.log_metrics(numbers, step=0)
    versions = register_release(client, run_id, checkpoints, tags)
    client.set_terminated(run_id)
    return run_id, versions
