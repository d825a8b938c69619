"""The lightweight twin of the Kubeflow pipeline, for ``kfp.local`` (SubprocessRunner, no Docker).

Same DAG as ``flows/kfp_pipeline.py`` (pretrain -> generator, adapt -> evaluate -> register +
promote), but each step is a Python-function component that calls the same component ``run()`` in
the current environment (``use_venv=False``). Parameters travel as one JSON string, data folders as
paths. Used by the tests and by ``tessera kfp run-local``.
"""

import json  # no `from __future__ import annotations`: KFP reads the real annotation types
from pathlib import Path
from typing import Any

from kfp import dsl

# Components run in this environment: nothing to pip-install (no network in CI).
_opts: dict[str, Any] = {"install_kfp_package": False}


@dsl.component(**_opts)
def pretrain_step(params_json: str, data_dir: str, data_version: str, encoder: dsl.Output[dsl.Model]):
    import json
    from pathlib import Path

    from components import pretrain
    from tessera.config import section_of

    cfg = section_of(pretrain.Config, json.loads(params_json), "pretrain")
    pretrain.run(cfg, data_dir, Path(encoder.path), data_version=data_version, progress=False)


@dsl.component(**_opts)
def generator_step(
    params_json: str,
    data_dir: str,
    data_version: str,
    encoder: dsl.Input[dsl.Model],
    generator: dsl.Output[dsl.Model],
):
    import json
    from pathlib import Path

    from components import train_generator
    from tessera.config import section_of

    cfg = section_of(train_generator.Config, json.loads(params_json), "generator")
    enc = Path(encoder.path) / "encoder.pt"
    train_generator.run(cfg, data_dir, enc, Path(generator.path), data_version=data_version)


@dsl.component(**_opts)
def adapt_step(
    params_json: str,
    data_dir: str,
    data_version: str,
    encoder: dsl.Input[dsl.Model],
    classifier: dsl.Output[dsl.Model],
):
    import json
    from pathlib import Path

    from components import adapt
    from tessera.config import section_of

    cfg = section_of(adapt.Config, json.loads(params_json), "adapt")
    enc = Path(encoder.path) / "encoder.pt"
    adapt.run(cfg, data_dir, enc, Path(classifier.path), data_version=data_version)


@dsl.component(**_opts)
def evaluate_step(
    params_json: str,
    data_dir: str,
    corrupted_dir: str,
    classifier: dsl.Input[dsl.Model],
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    import json
    from pathlib import Path

    from components import evaluate
    from tessera.config import section_of

    cfg = section_of(evaluate.Config, json.loads(params_json), "evaluate")
    result = evaluate.run(
        cfg, data_dir, corrupted_dir, Path(classifier.path) / "classifier.pt", Path(evaluation.path)
    )
    for key, value in result.items():
        if "/" not in key.split("/", 2)[-1] and isinstance(value, int | float):
            metrics.log_metric(key.replace("/", "."), float(value))


@dsl.component(**_opts)
def register_step(
    params_json: str,
    data_dir: str,
    encoder: dsl.Input[dsl.Model],
    generator: dsl.Input[dsl.Model],
    evaluation: dsl.Input[dsl.Artifact],
) -> str:
    import json
    from pathlib import Path

    from lifecycle import promotion, registry, tracking
    from tessera.config import section_of

    params = json.loads(params_json)
    mlflow_cfg = section_of(tracking.Config, params, "mlflow")
    checkpoints = {
        "encoder": Path(encoder.path) / "encoder.pt",
        "classifier": Path(evaluation.path) / "classifier.pt",  # with its adaptation policy
    }
    if (Path(generator.path) / "generator.pt").is_file():
        checkpoints["generator"] = Path(generator.path) / "generator.pt"
    evaluation_metrics = json.loads((Path(evaluation.path) / "metrics.json").read_text())
    release, _ = registry.release_from_files(  # checks the evaluation against the classifier first
        mlflow_cfg, params, data_dir, checkpoints, evaluation_metrics, "kfp-release"
    )
    decision = promotion.promote(release, section_of(promotion.Config, params, "promote"), mlflow_cfg)
    return json.dumps({"release": release, "promoted": decision.promoted, "reason": decision.reason})


@dsl.pipeline(name="tessera-retrain-local")
def retrain_local(params_json: str, data_dir: str, data_version: str, corrupted_dir: str) -> str:
    versioned = {"params_json": params_json, "data_dir": data_dir, "data_version": data_version}
    pre = pretrain_step(**versioned)
    gen = generator_step(**versioned, encoder=pre.outputs["encoder"])
    ada = adapt_step(**versioned, encoder=pre.outputs["encoder"])
    eva = evaluate_step(
        params_json=params_json,
        data_dir=data_dir,
        corrupted_dir=corrupted_dir,
        classifier=ada.outputs["classifier"],
    )
    reg = register_step(
        params_json=params_json,
        data_dir=data_dir,
        encoder=pre.outputs["encoder"],
        generator=gen.outputs["generator"],
        evaluation=eva.outputs["evaluation"],
    )
    return reg.output


def run_local(
    params: dict[str, Any],
    data: str | Path,
    data_version: dict[str, Any],
    corrupted: str | Path,
    pipeline_root: str | Path,
    caching: bool = False,
) -> dict[str, Any]:
    """Run :func:`retrain_local` with ``kfp.local`` here; returns the register step's answer.

    ``data_version`` is the one of ``data`` (the caller's lineage check computed it).
    """
    from kfp import local

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=caching,
    )
    task = retrain_local(
        params_json=json.dumps(params),
        data_dir=str(Path(data).resolve()),
        data_version=json.dumps(data_version),
        corrupted_dir=str(Path(corrupted).resolve()),
    )
    return dict(json.loads(task.output))
