"""Trust an evaluation made outside the flow only after checking it against the classifier.

``tessera registry register --evaluation F`` (and the Kubeflow pipeline's register step) records a
release whose numbers somebody else measured. Before it is registered:

1. every number the gate reads must be finite and within its range (``promotion.untrusted``);
2. the evaluation must name the weights it measured (``evaluated/weights_sha256``, written by
   ``components.evaluate``) and they must be the classifier's (``tessera.checkpoint.weights_digest``);
3. a spot check: the classifier's clean accuracy is measured here on a seeded sample of the versioned
   test split (``promote.verify_images``; 0: all) and must match the claimed ``clean/accuracy`` within
   ``promote.verify_tolerance`` plus four binomial standard errors of the sample.

A failure raises :class:`EvaluationRejected` naming the check; nothing is registered. The flow's own
evaluations are not checked again (it ran them on the registered weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lifecycle.promotion import Config, untrusted


class EvaluationRejected(ValueError):
    """An evaluation that cannot be trusted for the classifier it came with."""


def verify(classifier: str | Path, evaluation: Mapping[str, Any], data_dir: str | Path, cfg: Config) -> str:
    """Check ``evaluation`` (evaluate's metrics.json) against ``classifier``; -> what was verified."""
    import torch

    from components.evaluate import DIGEST_KEY, load_classifier
    from tessera import checkpoint
    from tessera.adapt.evalset import fit_size, load_subset
    from tessera.adapt.probe import predict

    for key in (cfg.clean_metric, cfg.corrupted_metric):
        if key not in evaluation:
            raise EvaluationRejected(f"the evaluation has no {key!r}: run `tessera evaluate` on it")
        problem = untrusted(key, evaluation[key])
        if problem:
            raise EvaluationRejected(f"the evaluation's {problem}")
    claimed_digest = evaluation.get(DIGEST_KEY)
    if not isinstance(claimed_digest, str) or not claimed_digest:
        raise EvaluationRejected(
            f"the evaluation does not say which weights it measured ({DIGEST_KEY!r}, written by"
            " `tessera evaluate`): evaluate this classifier again"
        )
    model, ckpt, classes = load_classifier(classifier, Path(data_dir))
    actual = checkpoint.weights_digest(ckpt)
    if claimed_digest != actual:
        raise EvaluationRejected(
            f"the evaluation measured weights {claimed_digest[:12]}, but {classifier} holds {actual[:12]}:"
            " register the classifier that was evaluated, or evaluate this one"
        )
    x, y = load_subset(Path(data_dir) / "test", classes, cfg.verify_images, 0)
    if len(y) == 0:
        raise EvaluationRejected(f"{data_dir}/test has no images to check the evaluation on")
    with torch.no_grad():
        measured = float((predict(model, fit_size(x, model.encoder.img_size)).argmax(1) == y).float().mean())
    claimed = float(evaluation[cfg.clean_metric])
    se = math.sqrt(max(claimed * (1 - claimed), 1e-4) / len(y))
    allowed = cfg.verify_tolerance + 4 * se
    if abs(measured - claimed) > allowed:
        raise EvaluationRejected(
            f"the evaluation claims {cfg.clean_metric} {claimed:.3f}, but the classifier scores"
            f" {measured:.3f} on {len(y)} images of {data_dir}/test (allowed difference {allowed:.3f})"
        )
    return (
        f"weights {actual[:12]} as evaluated; {cfg.clean_metric} {measured:.3f} on {len(y)} test images"
        f" against {claimed:.3f} claimed"
    )
