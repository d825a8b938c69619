"""The retrain DAG as a Kubeflow Pipelines v2 pipeline of container components.

Every step runs the same command as DVC, the container entry point and the Prefect task
(``python -m components.<step> ...``) in the train image. The image reference is a setting
(``TESSERA_TRAIN_IMAGE`` or ``--image``) with a fixed default tag, so the compiled YAML only changes
when the DAG does. The data version is a pipeline parameter (``data_version``: the DVC md5 of the
data artifact, which ``tessera data version`` prints), handed to every step that stamps a checkpoint.
Pretrain, generator and adapt request a GPU; every step can be retried and
cached. ``tessera kfp compile`` (``cli/kfp.py``) writes ``infra/kfp/retrain.yaml``; ``tessera kfp run-local``
runs the lightweight twin of this DAG (``flows/kfp_local.py``) with ``kfp.local``, no Docker needed.
"""

import os  # no `from __future__ import annotations`: KFP reads the real annotation types
from pathlib import Path
from typing import Any

DEFAULT_IMAGE = "ghcr.io/tessera-ml/tessera-train:0.1.0"
IMAGE_ENV = "TESSERA_TRAIN_IMAGE"
YAML_PATH = Path(__file__).resolve().parents[1] / "infra" / "kfp" / "retrain.yaml"
GPU_STEPS = ("pretrain", "generator", "adapt")


def train_image() -> str:
    """The train image: ``TESSERA_TRAIN_IMAGE`` or the fixed default tag."""
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def build_pipeline(
    image: str | None = None, gpu_type: str = "nvidia.com/gpu", retries: int = 2, caching: bool = True
) -> Any:
    """The KFP pipeline function for ``image`` (container components closed over the image)."""
    from kfp import dsl

    image = image or train_image()
    py = ["python", "-m"]

    def flags(**values: Any) -> list[Any]:
        """``--name value`` pairs in order (``data_version`` -> ``--data-version``)."""
        return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", v)]

    @dsl.container_component
    def pretrain(
        data: dsl.Input[dsl.Dataset],
        data_version: str,
        params: str,
        preset: str,
        encoder: dsl.Output[dsl.Model],
    ):
        return dsl.ContainerSpec(
            image=image,
            command=[*py, "components.pretrain"],
            args=flags(
                params=params, preset=preset, data=data.path, data_version=data_version, out=encoder.path
            ),
        )

    @dsl.container_component
    def generator(
        data: dsl.Input[dsl.Dataset],
        data_version: str,
        encoder: dsl.Input[dsl.Model],
        params: str,
        preset: str,
        out: dsl.Output[dsl.Model],
    ):
        return dsl.ContainerSpec(
            image=image,
            command=[*py, "components.train_generator"],
            args=flags(
                params=params,
                preset=preset,
                data=data.path,
                data_version=data_version,
                encoder=dsl.ConcatPlaceholder([encoder.path, "/encoder.pt"]),
                out=out.path,
            ),
        )

    @dsl.container_component
    def adapt(
        data: dsl.Input[dsl.Dataset],
        data_version: str,
        encoder: dsl.Input[dsl.Model],
        params: str,
        preset: str,
        classifier: dsl.Output[dsl.Model],
    ):
        return dsl.ContainerSpec(
            image=image,
            command=[*py, "components.adapt"],
            args=flags(
                params=params,
                preset=preset,
                data=data.path,
                data_version=data_version,
                encoder=dsl.ConcatPlaceholder([encoder.path, "/encoder.pt"]),
                out=classifier.path,
            ),
        )

    @dsl.container_component
    def evaluate(
        data: dsl.Input[dsl.Dataset],
        corrupted: dsl.Input[dsl.Dataset],
        classifier: dsl.Input[dsl.Model],
        params: str,
        preset: str,
        evaluation: dsl.Output[dsl.Artifact],
    ):
        return dsl.ContainerSpec(
            image=image,
            command=[*py, "components.evaluate"],
            args=flags(
                params=params,
                preset=preset,
                data=data.path,
                corrupted=corrupted.path,
                classifier=dsl.ConcatPlaceholder([classifier.path, "/classifier.pt"]),
                out=evaluation.path,
            ),
        )

    @dsl.container_component
    def register(
        encoder: dsl.Input[dsl.Model],
        generator: dsl.Input[dsl.Model],
        evaluation: dsl.Input[dsl.Artifact],
        data: dsl.Input[dsl.Dataset],
        params: str,
        preset: str,
    ):
        return dsl.ContainerSpec(
            image=image,
            command=["tessera", "registry"],
            args=[
                "register",
                *flags(
                    params=params,
                    preset=preset,
                    data=data.path,
                    encoder=dsl.ConcatPlaceholder([encoder.path, "/encoder.pt"]),
                    generator=dsl.ConcatPlaceholder([generator.path, "/generator.pt"]),
                    classifier=dsl.ConcatPlaceholder([evaluation.path, "/classifier.pt"]),  # with the policy
                    evaluation=dsl.ConcatPlaceholder([evaluation.path, "/metrics.json"]),
                ),
                "--promote",
            ],
        )

    @dsl.pipeline(
        name="tessera-retrain", description="Pretrain, generator, adapt, evaluate, register, promote"
    )
    def retrain(
        data_uri: str,
        corrupted_uri: str,
        data_version: str,
        params: str = "params.yaml",
        preset: str = "demo",
    ):
        data = dsl.importer(artifact_uri=data_uri, artifact_class=dsl.Dataset, reimport=False)
        corrupted = dsl.importer(artifact_uri=corrupted_uri, artifact_class=dsl.Dataset, reimport=False)
        versioned = {"data": data.output, "data_version": data_version, "params": params, "preset": preset}
        t_pre = pretrain(**versioned)
        t_gen = generator(**versioned, encoder=t_pre.outputs["encoder"])
        t_ada = adapt(**versioned, encoder=t_pre.outputs["encoder"])
        t_eva = evaluate(
            data=data.output,
            corrupted=corrupted.output,
            classifier=t_ada.outputs["classifier"],
            params=params,
            preset=preset,
        )
        t_reg = register(
            encoder=t_pre.outputs["encoder"],
            generator=t_gen.outputs["out"],
            evaluation=t_eva.outputs["evaluation"],
            data=data.output,
            params=params,
            preset=preset,
        )
        for name, t in (
            ("pretrain", t_pre),
            ("generator", t_gen),
            ("adapt", t_ada),
            ("evaluate", t_eva),
            ("register", t_reg),
        ):
            t.set_display_name(name).set_caching_options(caching and name != "register")
            t.set_retry(num_retries=retries, backoff_duration="30s")
            if name in GPU_STEPS:
                t.set_accelerator_type(gpu_type).set_accelerator_limit(1)

    return retrain


def compile_yaml(path: str | Path = YAML_PATH, image: str | None = None) -> Path:
    """Compile the container pipeline to ``path`` (default ``infra/kfp/retrain.yaml``)."""
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(image), str(path))
    return path
