"""An evaluation registered from outside the flow is checked against its classifier before anything is
registered: forged numbers, another model's weights, a missing digest and NaN are each refused with a
reason, and the registry stays empty; an honest evaluation registers with what was verified."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from components.evaluate import DIGEST_KEY
from lifecycle import tracking
from lifecycle.promotion import Config
from lifecycle.verify import EvaluationRejected, verify
from tessera import checkpoint

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "toy"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, c in enumerate(CLASSES):
            (root / split / c).mkdir(parents=True)
            for i in range(12):
                img = rng.integers(0, 80, (32, 32, 3)) + 80 * k  # the class sets the brightness
                Image.fromarray(img.astype(np.uint8)).save(root / split / c / f"{i}.png")
    return root


def _classifier(path: Path, seed: int) -> Path:
    import tessera.adapt.heads  # noqa: F401  (registers ttt_mae_classifier)
    from tessera.models import registry

    torch.manual_seed(seed)
    cfg = registry.config_of(
        "ttt_mae_classifier",
        backbone_arch="mae_vit_micro_patch4",
        backbone_config=registry.config_of("mae_vit_micro_patch4"),
        num_classes=3,
        rotation_head=False,
    )
    model = registry.build("ttt_mae_classifier", **cfg)
    ckpt = checkpoint.make(
        "ttt_mae_classifier", cfg, model.state_dict(), data_version={"md5": "toy.dir"}, classes=CLASSES
    )
    return checkpoint.save(ckpt, path)


def _honest(clf: Path, data: Path) -> dict:
    from components.evaluate import load_classifier
    from tessera.adapt.evalset import fit_size, load_subset
    from tessera.adapt.probe import predict

    model, ckpt, classes = load_classifier(clf, data)
    x, y = load_subset(data / "test", classes, 0, 0)
    acc = float((predict(model, fit_size(x, 32)).argmax(1) == y).float().mean())
    return {
        "clean/accuracy": acc,
        "corrupted/policy/mean_accuracy": acc / 2,
        DIGEST_KEY: checkpoint.weights_digest(ckpt),
    }


@pytest.mark.parametrize(
    "forge, reason",
    [
        (lambda m, other: {**m, "clean/accuracy": 0.99}, "claims clean/accuracy 0.990"),
        (lambda m, other: {**m, DIGEST_KEY: other}, "measured weights"),
        (lambda m, other: {k: v for k, v in m.items() if k != DIGEST_KEY}, "which weights"),
        (lambda m, other: {**m, "corrupted/policy/mean_accuracy": float("nan")}, "is NaN"),
        (lambda m, other: {**m, "clean/accuracy": 1.5}, "outside [0, 1]"),
    ],
    ids=["forged-accuracy", "other-weights", "no-digest", "nan", "out-of-range"],
)
def test_untrustworthy_evaluations_are_refused(tmp_path: Path, data: Path, forge, reason: str) -> None:
    clf, other = _classifier(tmp_path / "c.pt", 0), _classifier(tmp_path / "o.pt", 1)
    honest = _honest(clf, data)
    assert verify(clf, honest, data, Config(verify_images=0)).startswith("weights ")
    bad = forge(honest, checkpoint.weights_digest(checkpoint.load(other)))
    with pytest.raises(EvaluationRejected, match=reason.replace("[", r"\[").replace("]", r"\]")):
        verify(clf, bad, data, Config(verify_images=0))


def test_registry_register_refuses_a_forged_evaluation_and_registers_an_honest_one(
    sqlite_ws: Path, tmp_path: Path, data: Path
) -> None:
    from cli.main import app
    from tessera.models import build

    weights = build("mae_vit_micro_patch4").state_dict()
    encoder = checkpoint.make("mae_vit_micro_patch4", {}, weights, data_version={"md5": "toy.dir"})
    mae_ckpt = checkpoint.save(encoder, tmp_path / "encoder.pt")
    clf = _classifier(tmp_path / "classifier.pt", 0)
    honest = _honest(clf, data)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**honest, "clean/accuracy": 0.99, "corrupted/policy/mean_accuracy": 0.99}))
    args = ["registry", "register", "--encoder", str(mae_ckpt), "--classifier", str(clf), "--data", str(data)]
    out = CliRunner().invoke(app, [*args, "--evaluation", str(forged), "--promote"])
    assert out.exit_code == 2 and "not registered" in out.output and "claims" in out.output, out.output
    client = tracking.client()
    assert client.search_registered_models() == []  # nothing registered, nothing promoted
    good = tmp_path / "metrics.json"
    good.write_text(json.dumps(honest))
    out = CliRunner().invoke(app, [*args, "--evaluation", str(good)])
    assert out.exit_code == 0, out.output
    (mv,) = client.search_model_versions("name = 'tessera-ttt-classifier'")
    verified = client.get_run(mv.run_id).data.tags["evaluation.verified"]
    assert verified.startswith(f"weights {honest[DIGEST_KEY][:12]} as evaluated")
    assert "36 test images" in verified
