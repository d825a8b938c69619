"""components.adapt and components.evaluate end to end on tiny digits, and their bad-input errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import adapt as adapt_step
from components import evaluate as eval_step
from tessera import checkpoint
from tessera.adapt.evalset import fit_size, load_subset
from tessera.adapt.heads import ARCH, TTTClassifier
from tessera.adapt.metrics import ci95_halfwidth, summarize
from tessera.adapt.probe import predict
from tessera.errors import ConfigError, DataError, ModelError

Adapted = tuple[Path, dict[str, float]]
DV = {"md5": "a1b2c3d4.dir", "files": 10, "size": 100}  # the version of the adapt data, not the encoder's
EVAL = eval_step.Config(
    per_cell=4, clean_subset=10, ttt_steps=2, ttt_copies=2, rotation_steps=1, batch_size=4, progress=False
)


@pytest.fixture(scope="module")
def adapted(
    digits_dirs: tuple[Path, Path], encoder_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("adapt-out")
    cfg = adapt_step.Config(methods=("linear", "knn", "finetune"), epochs=40, finetune_epochs=1, ttt_steps=3)
    return out, adapt_step.run(cfg, digits_dirs[0], encoder_path, out, data_version=DV)


def test_adapt_writes_classifier_knn_finetune_and_metrics(adapted: tuple[Path, dict[str, float]]) -> None:
    out, metrics = adapted
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["linear/test_accuracy"] > 0.45  # 10 classes: chance is 0.1
    assert metrics["knn/test_accuracy"] > 0.3
    expected = {"linear/val_accuracy", "knn/val_accuracy", "finetune/test_accuracy", "rotation/test_accuracy"}
    assert expected <= set(metrics)
    ckpt = checkpoint.load(out / "classifier.pt", arch=ARCH)
    assert ckpt["classes"] == [f"digit_{i}" for i in range(10)]
    assert ckpt["data_version"] == DV  # its own data's version, as given (not copied from the encoder)
    assert ckpt["extra"]["ttt"] == {"steps": 3, "copies": 16, "lr": 5e-3, "mask_ratio": 0.75, "momentum": 0.9}
    assert ckpt["config"]["backbone_arch"] == "mae_vit_micro_patch4" and ckpt["config"]["num_classes"] == 10
    assert checkpoint.load(out / "finetuned.pt", arch=ARCH)["extra"]["method"] == "finetune"
    assert (out / "knn.pt").is_file()


def test_registry_rebuilds_the_classifier_without_importing_tessera_adapt(
    adapted: tuple[Path, dict[str, float]],
) -> None:
    code = (
        "import sys; from tessera import checkpoint; from tessera.models import registry;"
        f"m = registry.from_checkpoint(checkpoint.load({str(adapted[0] / 'classifier.pt')!r}));"
        "print(type(m).__name__, 'ttt_mae_classifier' in registry.names())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["TTTClassifier", "True"]


def _frozen_accuracy(model: TTTClassifier, split: Path, classes: list[str], size: int) -> float:
    """Accuracy of the unadapted classifier on the subset that components.evaluate draws (seed 0)."""
    x, y = load_subset(split, classes, size, EVAL.seed)
    return summarize(predict(model, fit_size(x, model.encoder.img_size)).argmax(1), y)["accuracy"]


def _assert_count_and_wilson(acc: float, n: int, ci95: float) -> None:
    """``acc`` is k/n for a whole k, and ``ci95`` is the Wilson half-width of k out of n."""
    k = round(acc * n)
    assert acc == pytest.approx(k / n, abs=1e-12) and 0 <= k <= n
    assert ci95 == pytest.approx(ci95_halfwidth(k, n), abs=1e-12)


def test_evaluate_writes_every_key_plot_and_table(
    digits_dirs: tuple[Path, Path], adapted: Adapted, tmp_path: Path
) -> None:
    data, cdata = digits_dirs
    params = tmp_path / "params.yaml"
    section = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(EVAL).items()}
    params.write_text(yaml.safe_dump({"evaluate": section}))
    out = tmp_path / "eval"
    eval_step.main(
        [
            "--params",
            str(params),
            "--data",
            str(data),
            "--corrupted",
            str(cdata),
            "--classifier",
            str(adapted[0] / "classifier.pt"),
            "--out",
            str(out),
        ]
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["clean/n"] == 100 and m["clean/accuracy"] > 0.5
    # it names the weights it measured (checked when registered from outside the flow)
    evaluated = checkpoint.load(adapted[0] / "classifier.pt")
    assert m[eval_step.DIGEST_KEY] == checkpoint.weights_digest(evaluated)
    assert checkpoint.weights_digest(checkpoint.load(out / "classifier.pt")) == m[eval_step.DIGEST_KEY]
    # the frozen scores, recomputed here from the same seeded subsets, must be the reported ones
    model, _, classes = eval_step.load_classifier(adapted[0] / "classifier.pt", data)
    expected = {"clean/frozen/accuracy": _frozen_accuracy(model, data / "test", classes, 10)}
    for c in ("gaussian_noise", "contrast"):
        for s in ("1", "3"):
            expected[f"corrupted/frozen/{c}/{s}"] = _frozen_accuracy(model, cdata / c / s, classes, 4)
    assert {k: m[k] for k in expected} == expected
    assert expected["clean/frozen/accuracy"] >= 0.3  # 10 classes: chance is 0.1 (measured 0.6)
    for method in eval_step.ALL_METHODS:
        assert m[f"clean/{method}/n"] == 10
        _assert_count_and_wilson(m[f"clean/{method}/accuracy"], 10, m[f"clean/{method}/ci95"])
        assert m[f"corrupted/{method}/n"] == 4 * 4  # 2 corruptions x 2 severities x 4 images
        for c in ("gaussian_noise", "contrast"):
            for s in ("1", "3"):
                key = f"corrupted/{method}/{c}/{s}"
                assert m[f"{key}/n"] == 4
                _assert_count_and_wilson(m[key], 4, m[f"{key}/ci95"])
        cells = [m[f"corrupted/{method}/{c}/{s}"] for c in ("gaussian_noise", "contrast") for s in ("1", "3")]
        assert m[f"corrupted/{method}/mean_accuracy"] == pytest.approx(sum(cells) / 4)
        assert m[f"cost/{method}/seconds_per_image"] > 0
    tables = ("plots/cells.csv", "plots/per_severity.csv", "plots/per_corruption.csv")
    for f in ("heatmap.png", "bars.png", *tables):
        assert (out / f).stat().st_size > 0
    assert (out / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    rows = (out / "plots" / "cells.csv").read_text().splitlines()
    assert len(rows) == 1 + len(eval_step.ALL_METHODS) * 4
    _assert_gains_and_policy(m, out)


def _assert_gains_and_policy(m: dict[str, float], out: Path) -> None:
    """Paired gains over frozen match the accuracies; the policy is chosen, hashed, and stored in the
    evaluated classifier (the checkpoint the flow registers)."""
    from tessera.adapt.policy import NONE, version_of

    for method in eval_step.ALL_METHODS[1:]:
        diff = m[f"corrupted/{method}/mean_accuracy"] - m["corrupted/frozen/mean_accuracy"]
        assert m[f"gain/{method}/mean"] == pytest.approx(diff)  # equal cells: item mean = cell mean
        assert m[f"gain/{method}/ci_low"] <= m[f"gain/{method}/mean"] <= m[f"gain/{method}/ci_high"]
        assert m[f"gain/{method}/images"] == 4  # 4 source images, each in 4 cells
    policy = json.loads((out / eval_step.POLICY_FILE).read_text())
    assert policy["version"] == version_of(policy)
    assert policy["selected_on"] == ["contrast", "gaussian_noise"]  # no extra corruptions evaluated
    assert {c["method"] for c in policy["candidates"]} == set(eval_step.ALL_METHODS[1:])
    applied = "frozen" if policy["method"] == NONE else policy["method"]
    assert m["corrupted/policy/mean_accuracy"] == m[f"corrupted/{applied}/mean_accuracy"]
    if policy["method"] == NONE:  # 4 images cannot prove a gain
        assert "no method is proven to help" in policy["reason"]
    stored = checkpoint.load(out / "classifier.pt", arch=ARCH)
    assert stored["extra"]["policy"] == policy and stored["data_version"] == DV
    assert (out / "gain_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_batched_and_loop_agree(
    digits_dirs: tuple[Path, Path], adapted: Adapted, tmp_path: Path
) -> None:
    import dataclasses

    data, cdata = digits_dirs
    cfg = dataclasses.replace(EVAL, methods=("ttt_mae_episodic",), corruptions=("contrast",), severities=(3,))
    a = eval_step.run(cfg, data, cdata, adapted[0] / "classifier.pt", tmp_path / "a")
    b = eval_step.run(
        dataclasses.replace(cfg, batched=False), data, cdata, adapted[0] / "classifier.pt", tmp_path / "b"
    )
    assert a["corrupted/ttt_mae_episodic/contrast/3"] == b["corrupted/ttt_mae_episodic/contrast/3"]
    assert "corrupted/ttt_mae_episodic/gaussian_noise/3" not in a


def test_missing_corrupted_set_says_what_to_run(
    digits_dirs: tuple[Path, Path], adapted: Adapted, tmp_path: Path
) -> None:
    with pytest.raises(DataError, match=r"run `tessera data corrupt --name digits`"):
        eval_step.run(
            EVAL, digits_dirs[0], tmp_path / "digits-c", adapted[0] / "classifier.pt", tmp_path / "o"
        )


def test_head_with_wrong_number_of_classes_is_refused(
    digits_dirs: tuple[Path, Path], adapted: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    data = tmp_path / "three"
    for c in ("digit_0", "digit_1", "digit_2"):
        shutil.copytree(digits_dirs[0] / "test" / c, data / "test" / c)
    with pytest.raises(ModelError, match=r"predicts 10 classes.*re-run `tessera adapt"):
        eval_step.run(EVAL, data, digits_dirs[1], adapted[0] / "classifier.pt", tmp_path / "o")


def test_ttt_mae_on_a_classifier_without_decoder_is_refused(
    digits_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    from tessera.models import registry

    enc = tmp_path / "simclr.pt"
    arch = "simclr_vit_micro_patch4"
    checkpoint.save(checkpoint.make(arch, registry.config_of(arch), registry.build(arch).state_dict()), enc)
    adapt_step.run(adapt_step.Config(epochs=2), digits_dirs[0], enc, tmp_path / "a", data_version=DV)
    with pytest.raises(ModelError, match="pretrain.method: mae"):
        eval_step.run(EVAL, digits_dirs[0], digits_dirs[1], tmp_path / "a" / "classifier.pt", tmp_path / "o")


def test_unknown_keys_and_methods_are_config_errors(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"adapt": {"epochz": 3}}))
    with pytest.raises(ConfigError, match="epochz"):
        adapt_step.execute(
            str(params), None, str(tmp_path), str(tmp_path / "e.pt"), str(tmp_path / "o"), None
        )
    with pytest.raises(ConfigError, match="knn2"):
        adapt_step.validate(adapt_step.Config(methods=("knn2",)))
    with pytest.raises(ConfigError, match="adapt.epochs"):
        adapt_step.validate(adapt_step.Config(epochs=0))
    with pytest.raises(ConfigError, match="knn_k"):
        adapt_step.validate(adapt_step.Config(knn_k=0))


@pytest.mark.parametrize("recipe", ["joint", "vit_probe"])
def test_the_registered_classifier_is_the_chosen_recipe_and_evaluates(
    recipe: str, digits_dirs: tuple[Path, Path], encoder_path: Path, tmp_path: Path
) -> None:
    import dataclasses

    from tessera.models.registry import from_checkpoint

    cfg = adapt_step.Config(classifier=recipe, epochs=5, recipe_epochs=1, recipe_batch_size=32, flip=False)
    metrics = adapt_step.run(cfg, digits_dirs[0], encoder_path, tmp_path / "a", data_version=DV)
    ckpt = checkpoint.load(tmp_path / "a" / "classifier.pt", arch=ARCH)
    assert ckpt["extra"]["recipe"]["name"] == recipe == ckpt["extra"]["method"]
    assert ckpt["extra"]["recipe"]["epochs"] == 1 and f"{recipe}/test_accuracy" in metrics
    assert ckpt["config"].get("head", "linear") == ("vit" if recipe == "vit_probe" else "linear")
    assert checkpoint.load(tmp_path / "a" / "linear.pt")["extra"]["method"] == "linear"
    model = from_checkpoint(ckpt)  # rebuilt from its recipe's config
    assert type(model.head).__name__ == ("ViTProbe" if recipe == "vit_probe" else "LinearProbe")
    small = dataclasses.replace(
        EVAL, methods=("frozen", "normstat", "ttt_mae_episodic"), corruptions=("contrast",)
    )
    m = eval_step.run(small, digits_dirs[0], digits_dirs[1], tmp_path / "a" / "classifier.pt", tmp_path / "e")
    assert m["corrupted/frozen/mean_accuracy"] == m["corrupted/normstat/mean_accuracy"] or recipe == "joint"


def test_adapt_without_val_or_test_images_fails_instead_of_scoring_nothing(
    digits_dirs: tuple[Path, Path], encoder_path: Path, tmp_path: Path
) -> None:
    only_train = tmp_path / "only-train"
    shutil.copytree(digits_dirs[0] / "train", only_train / "train")
    cfg = adapt_step.Config(methods=("linear",), epochs=1)
    with pytest.raises(DataError, match="no val or test images"):
        adapt_step.run(cfg, only_train, encoder_path, tmp_path / "out", data_version="x.dir")
    assert not (tmp_path / "out" / "classifier.pt").exists()
