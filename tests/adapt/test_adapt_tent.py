"""TENT online over a stream, as the reference runs it (DequanWang/tent): the predictions of a batch
come from the weights before that batch's update, so the first batch is exactly the frozen model's
and later ones see the updates; a reset between streams restores the weights bit for bit."""

from __future__ import annotations

import pytest
import torch

from tessera.adapt.evaluation import MethodSettings, per_request, run_method
from tessera.adapt.heads import TTTClassifier
from tessera.adapt.normstat import normstat_predict
from tessera.adapt.probe import predict
from tessera.adapt.tent import Tent, TentSettings, norm_parameters, tent_episodic


@pytest.mark.parametrize("batch_stats", [False, True])
def test_tent_changes_predictions_after_its_first_update_and_never_before(
    classifier: TTTClassifier, images: torch.Tensor, batch_stats: bool
) -> None:
    stream = torch.cat([images, images.flip(-1), images.flip(-2)])  # 3 batches of 6
    frozen = predict(classifier, stream)
    running = classifier.head.bn.running_mean.clone()
    before = {k: p.detach().clone() for k, p in norm_parameters(classifier.encoder).items()}
    tent = Tent(classifier, TentSettings(lr=0.05, steps=1, batch_size=6, batch_stats=batch_stats))
    probs = tent.run(stream)
    # the first batch: no update has happened yet (with batch statistics: the head's BatchNorm
    # normalises with the batch's own statistics, as normstat with no prior does)
    first = normstat_predict(classifier, stream[:6], prior_strength=0.0) if batch_stats else frozen[:6]
    assert torch.allclose(probs[:6], first, atol=1e-5) and (batch_stats or torch.equal(probs[:6], first))
    assert torch.equal(classifier.head.bn.running_mean, running)  # running statistics untouched
    assert not torch.allclose(probs[6:], frozen[6:], atol=1e-6)  # later batches: adapted weights
    adapted = norm_parameters(classifier.encoder)
    assert any(not torch.equal(adapted[k], before[k]) for k in before)
    tent.reset()  # the next stream starts from the source model
    assert all(torch.equal(norm_parameters(classifier.encoder)[k], v) for k, v in before.items())
    assert torch.equal(predict(classifier, stream), frozen)
    again = tent.run(stream)  # same stream after a reset: the same answers (optimizer state reset too)
    assert torch.allclose(again, probs, atol=1e-6)


def test_tent_episodic_adapts_each_request_alone_and_restores_the_model(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    state = {k: v.clone() for k, v in classifier.state_dict().items()}
    settings = TentSettings(lr=0.5, steps=2)
    one = tent_episodic(classifier, images, settings)
    assert all(torch.equal(v, state[k]) for k, v in classifier.state_dict().items())  # bit for bit
    assert torch.equal(tent_episodic(classifier, images, settings), one)  # no state across requests
    no_update = tent_episodic(classifier, images, TentSettings(steps=0))
    assert torch.allclose(no_update, normstat_predict(classifier, images, prior_strength=0.0), atol=1e-5)
    assert not torch.allclose(one, no_update, atol=1e-6)  # the updates change the answer
    # the evaluation scores it request by request, as the endpoint and `tessera predict` apply it
    stream = torch.cat([images, images.flip(-1)])
    ms = MethodSettings(tent=settings, request_images=6)
    by_request = run_method("tent_episodic", classifier, stream, ms)
    assert torch.allclose(by_request[6:], tent_episodic(classifier, stream[6:], settings), atol=1e-6)
    served = per_request("tent_episodic", classifier, stream[:6], {"tent_steps": 2, "tent_lr": 0.5})
    assert torch.allclose(served, by_request[:6], atol=1e-6)
    norm = per_request("normstat", classifier, stream[:6], {"prior": 4.0, "request_images": 6})
    assert torch.allclose(norm, normstat_predict(classifier, stream[:6], 4.0), atol=1e-6)
