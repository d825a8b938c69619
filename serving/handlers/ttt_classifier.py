"""TorchServe handler: images -> class probabilities after per-request test-time training (TTT-MAE).

Gandelsman, Sun, Chen, Efros, "Test-Time Training with Masked Autoencoders" (NeurIPS 2022): each
image is adapted on its own copy of the encoder by ``steps`` SGD steps on the MAE reconstruction loss
of ``copies`` randomly masked copies, then classified. The adaptation is the library's
(``tessera.adapt``): episodic deployments adapt a whole TorchServe batch in one vectorised pass
(``tessera.adapt.batched``); an ``online`` deployment keeps adapting along the request stream
(``TestTimeTrainer`` in online mode, requests of a batch in arrival order, reset every
``reset_every`` images). ``inference`` is overridden so nothing runs under ``torch.inference_mode``.

Whether a request is adapted at all is the release's adaptation policy (``extra["policy"]`` of the
checkpoint, chosen by ``evaluate``; :func:`tessera.adapt.policy.resolve`): an explicit ``method``
(``none``, ``normstat``, ``tent_episodic`` or ``ttt_mae_episodic``) or budget (``steps``/``copies``)
in the request wins, then the policy, then the deployment's ``method`` setting (``none`` unless
configured). With ``none`` the answer is the frozen model's prediction, exactly; ``normstat`` and
``tent_episodic`` adapt to the request's own images (``tessera.adapt.evaluation.per_request``).
Every answer names the method applied, who chose it (``method_source``) and the policy version.

Admission control (``serving.handlers.schema.WorkBudget``): a request's work, images x steps x copies,
must fit its share of TorchServe's response timeout at the speed measured on the deployed model when
the worker starts (one tiny ``adapt_batch`` call, timed); a request over it is refused with a 400 that
says the largest budget allowed. The handler setting ``max_work`` (units) replaces the measurement.

Every answer carries the prediction without adaptation too, the adaptation loss per step and, for
adapted episodic requests, the reconstruction loss of the frozen and of the adapted encoder on the
same masks (those of step 0).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from serving.handlers.base import Batch, Item, TesseraHandler
from serving.handlers.request import RequestError
from serving.handlers.schema import TTTDeployment, TTTRequest, WorkBudget, budget_seconds, calibrate
from tessera.errors import TesseraError

logger = logging.getLogger(__name__)


class TTTClassifierHandler(TesseraHandler):
    """``{"predictions": [{"class", "confidence", "probabilities", "before": {...}, "loss": {...}}]}``."""

    def load_model(self, ckpt: dict[str, Any]) -> nn.Module:
        import tessera.adapt.heads  # noqa: F401  (registers ``ttt_mae_classifier``)

        return super().load_model(ckpt)

    def setup(self) -> None:
        from tessera.adapt.ttt_mae import require_decoder

        clf: Any = self.model  # a TTTClassifier (tessera.adapt.heads)
        require_decoder(clf)
        from tessera.names import ttt_defaults

        ttt = ttt_defaults((self.ckpt.get("extra") or {}).get("ttt"))  # the checkpoint's, else the defaults
        s = self.settings
        self.steps = int(s.get("steps", ttt["steps"]))
        self.copies = int(s.get("copies", ttt["copies"]))
        self.lr = float(s.get("lr", ttt["lr"]))
        self.momentum = float(ttt["momentum"])
        self.mask_ratio = float(s.get("mask_ratio", ttt["mask_ratio"]))
        self.max_steps = max(int(s.get("max_steps", 50)), self.steps)
        self.max_copies = max(int(s.get("max_copies", 64)), self.copies)
        self.online = bool(s.get("online", False))
        from tessera.adapt.policy import METHODS_SERVED, NONE

        self.policy = (self.ckpt.get("extra") or {}).get("policy") or None
        self.default_method = str(s.get("method", NONE))  # for checkpoints without a policy
        if self.default_method not in METHODS_SERVED:
            raise TesseraError(f"handler setting method={self.default_method!r}: use one of {METHODS_SERVED}")
        self.classes = list(
            self.ckpt.get("classes") or [str(k) for k in range(int(getattr(self.model, "num_classes", 0)))]
        )
        self.deployment = TTTDeployment(
            steps=self.steps,
            copies=self.copies,
            max_steps=self.max_steps,
            max_copies=self.max_copies,
            policy=self.policy,
            default_method=self.default_method,
            online=self.online,
        )
        self.retry_alone = not self.online  # an online stream must not see a request twice
        self.budget = self._budget()
        self.stream_index = 0  # online: images seen so far (seeds their masks)
        self.trainer = None
        if self.online:
            from tessera.adapt.ttt_mae import ttt_mae_trainer

            self.trainer = ttt_mae_trainer(
                clf, self._settings(self.steps, self.copies, 0, "online", int(s.get("reset_every", 0)))
            )

    def _settings(
        self, steps: int, copies: int, seed: int, mode: str = "episodic", reset_every: int = 0
    ) -> Any:
        from tessera.adapt.test_time import TTTSettings

        return TTTSettings(
            steps=steps,
            copies=copies,
            lr=self.lr,
            momentum=self.momentum,
            mask_ratio=self.mask_ratio,
            mode=mode,
            reset_every=reset_every,
            seed=seed,
        )

    def _budget(self) -> WorkBudget:
        """Admission control: ``max_work`` units if set, else calibrated on the deployed model."""
        s, yaml_cfg = self.settings, self.context.model_yaml_config or {}
        seconds = budget_seconds(
            float(yaml_cfg.get("responseTimeout", 120)),
            int(yaml_cfg.get("batchSize", 1)),
            float(s.get("budget_fraction", 0.5)),
        )
        # a request within the default budget (the policy's, else the deployment's) is always admitted
        default = self.deployment.plan(TTTRequest())
        units = max(int(default["steps"]) * int(default["copies"]), self.steps * self.copies)
        floor = max(1, self.max_images * units)
        ceiling = self.max_images * self.max_steps * self.max_copies
        if s.get("max_work"):
            return WorkBudget(int(s["max_work"]), 0.0, seconds)
        from tessera.adapt.batched import adapt_batch

        x = torch.rand(1, 3, self.img_size, self.img_size, generator=torch.Generator().manual_seed(0))
        x = x.to(self.device)
        clf: Any = self.model

        def run() -> None:
            with torch.inference_mode(False), torch.enable_grad():
                adapt_batch(
                    clf, x, steps=2, copies=2, lr=self.lr, mask_ratio=self.mask_ratio, diagnostics=False
                )

        budget = calibrate(run, 4, seconds, floor, ceiling)
        logger.info(
            "TTT admission: %.2f ms per image x step x copy; at most %d units per request (%.1f s)",
            budget.seconds_per_unit * 1e3,
            budget.max_units,
            seconds,
        )
        return budget

    def request_model(self) -> type[TTTRequest]:
        return self.deployment.model()

    def plan(self, req: TTTRequest, item: Item) -> dict[str, Any]:
        options = self.deployment.plan(req)
        self.budget.check(item.images.shape[0], int(options["steps"]), int(options["copies"]))
        return options

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:  # type: ignore[override]
        """Gradients on: test-time training needs them (BaseHandler would use inference_mode)."""
        with torch.inference_mode(False), torch.enable_grad():
            return super().inference(batch, *args, **kwargs)

    def predict(self, items: list[Item]) -> list[Any]:
        results = self._adapt(items)
        done = [r for r in results if not isinstance(r, RequestError)]
        if done:
            probs = torch.cat([r[0] for r in done])
            before = torch.cat([r[2] for r in done])
            self.gauge("ConfidenceBeforeTTT", float(before.max(dim=1).values.mean()), "probability")
            self.gauge("ConfidenceAfterTTT", float(probs.max(dim=1).values.mean()), "probability")
            last = [r[1][:, -1] for r in done if r[1].numel()]
            if last:
                self.gauge("TTTReconstructionLoss", float(torch.cat(last).mean()), "loss")
            self.gauge("ImagesPerBatch", probs.shape[0], "count")
        out: list[Any] = []
        for it, result in zip(items, results, strict=True):
            if isinstance(result, RequestError):  # online: this request failed, the others did not
                out.append(result)
                continue
            p, loss, p0, recon = result
            preds = [
                self._prediction(p[i], p0[i], loss[i], None if recon is None else recon[i])
                for i in range(it.images.shape[0])
            ]
            mode = "online" if self.online else "episodic"
            out.append({"classes": self.classes, "mode": mode, **it.options, "predictions": preds})
        return out

    def _adapt(self, items: list[Item]) -> list[Any]:
        """Per item: probabilities after TTT (k, K), the loss before each step (k, steps), the
        probabilities without adaptation (k, K) and, for adapted episodic requests, the reconstruction
        loss before and after adaptation on the same masks (k, 2; else None). Online, a request that
        fails is a RequestError in its place (it is not retried: the stream must see it once)."""
        if self.trainer is not None:  # online: one stream, requests in arrival order
            out: list[Any] = []
            for it in items:
                try:
                    x = it.images.to(self.device)
                    with torch.no_grad():
                        before = self.model.eval()(x).softmax(dim=1).cpu()  # the stream's weights so far
                    p, loss = self.trainer.run(x, self.stream_index)
                    self.stream_index += it.images.shape[0]
                    out.append((p.cpu(), loss, before, None))
                except Exception as e:  # noqa: BLE001 - this request only
                    out.append(self._fault(e, it.index, "test-time training"))
            return out
        from tessera.adapt.batched import adapt_batch

        clf: Any = self.model
        per_item: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]] = {}
        groups: dict[tuple[int, int, int], list[int]] = {}
        for j, it in enumerate(items):
            if it.options["method"] in ("normstat", "tent_episodic"):  # the request's images adapt
                from tessera.adapt.evaluation import per_request

                x = it.images.to(self.device)
                with torch.no_grad():
                    p0 = self.model.eval()(x).softmax(dim=1).cpu()
                p = per_request(it.options["method"], clf, x, it.options.get("settings") or {}).detach()
                per_item[j] = (p.cpu(), torch.empty(len(p0), 0), p0, None)
                continue
            if it.options["steps"] == 0:  # method none: the frozen prediction, exactly
                with torch.no_grad():
                    p0 = self.model.eval()(it.images.to(self.device)).softmax(dim=1).cpu()
                per_item[j] = (p0, torch.empty(len(p0), 0), p0, None)
                continue
            groups.setdefault((it.options["steps"], it.options["copies"], it.options["seed"]), []).append(j)
        for (steps, copies, seed), members in groups.items():
            images = torch.cat([items[j].images for j in members]).to(self.device)  # (M, 3, S, S)
            # each image's masks are seeded by (seed, its index within its request)
            indices = [k for j in members for k in range(items[j].images.shape[0])]
            res = adapt_batch(
                clf,
                images,
                steps=steps,
                copies=copies,
                lr=self.lr,
                mask_ratio=self.mask_ratio,
                momentum=self.momentum,
                seed=seed,
                indices=indices,
            )
            assert res.probs_before is not None and res.recon_loss_before is not None
            assert res.recon_loss_after is not None
            recon = torch.stack([res.recon_loss_before, res.recon_loss_after], dim=1)
            start = 0
            for j in members:
                k = items[j].images.shape[0]
                cut = slice(start, start + k)
                per_item[j] = (
                    res.probs_after[cut].cpu(),
                    res.losses[cut].cpu(),
                    res.probs_before[cut].cpu(),
                    recon[cut].cpu(),
                )
                start += k
        return [per_item[j] for j in range(len(items))]

    def _prediction(
        self, p: torch.Tensor, p0: torch.Tensor, loss: torch.Tensor, recon: torch.Tensor | None
    ) -> dict[str, Any]:
        k, k0 = int(p.argmax()), int(p0.argmax())
        return {
            "class": self.classes[k],
            "index": k,
            "confidence": float(p[k]),
            "probabilities": p.tolist(),
            "before": {
                "class": self.classes[k0],
                "index": k0,
                "confidence": float(p0[k0]),
                "probabilities": p0.tolist(),
            },
            "loss": {
                "per_step": loss.tolist(),
                "first": float(loss[0]) if loss.numel() else None,
                "last": float(loss[-1]) if loss.numel() else None,
                # episodic: the loss of the frozen and of the adapted encoder on the same masks
                "before": None if recon is None else float(recon[0]),
                "after": None if recon is None else float(recon[1]),
            },
        }
