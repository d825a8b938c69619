"""TENT online over a stream, as the reference runs it (DequanWang/tent): the predictions of a batch
come from the weights before that batch's update, so the first batch is exactly the frozen model's
and later ones see the updates; a reset between streams restores the weights bit for bit."""

from __future__ import annotations

import torch

from tessera.adapt.heads import TTTClassifier
from tessera.adapt.probe import predict
from tessera.adapt.tent import Tent, TentSettings, norm_parameters


def test_tent_changes_predictions_after_its_first_update_and_never_before(
    classifier: TTTClassifier, images: torch.Tensor
) -> None:
    stream = torch.cat([images, images.flip(-1), images.flip(-2)])  # 3 batches of 6
    frozen = predict(classifier, stream)
    before = {k: p.detach().clone() for k, p in norm_parameters(classifier.encoder).items()}
    tent = Tent(classifier, TentSettings(lr=0.05, steps=1, batch_size=6))
    probs = tent.run(stream)
    assert torch.equal(probs[:6], frozen[:6])  # the first batch: no update has happened yet
    assert not torch.allclose(probs[6:], frozen[6:], atol=1e-6)  # later batches: adapted weights
    adapted = norm_parameters(classifier.encoder)
    assert any(not torch.equal(adapted[k], before[k]) for k in before)
    tent.reset()  # the next stream starts from the source model
    assert all(torch.equal(norm_parameters(classifier.encoder)[k], v) for k, v in before.items())
    assert torch.equal(predict(classifier, stream), frozen)
    again = tent.run(stream)  # same stream after a reset: the same answers (optimizer state reset too)
    assert torch.allclose(again, probs, atol=1e-6)
