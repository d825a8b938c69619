"""TorchServe handler: images -> class probabilities after per-request test-time training (TTT-MAE).

Gandelsman, Sun, Chen, Efros, "Test-Time Training with Masked Autoencoders" (NeurIPS 2022): each
image is adapted on its own copy of the encoder by ``steps`` SGD steps on the MAE reconstruction loss
of ``copies`` randomly masked copies, then classified. The adaptation is the library's
(``tessera.adapt``): episodic deployments adapt a whole TorchServe batch in one vectorised pass
(``tessera.adapt.batched``); an ``online`` deployment keeps adapting along the request stream
(``TestTimeTrainer`` in online mode, requests of a batch in arrival order, reset every
``reset_every`` images). ``inference`` is overridden so nothing runs under ``torch.inference_mode``.

Every answer carries the prediction without adaptation too, the adaptation loss per step and, for
episodic deployments, the reconstruction loss of the frozen and of the adapted encoder on the same
masks (those of step 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from serving.handlers.base import Batch, Item, TesseraHandler
from serving.handlers.request import RequestError, int_option


class TTTClassifierHandler(TesseraHandler):
    """``{"predictions": [{"class", "confidence", "probabilities", "before": {...}, "loss": {...}}]}``."""

    options = ("steps", "copies", "seed")

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
        self.classes = list(
            self.ckpt.get("classes") or [str(k) for k in range(int(getattr(self.model, "num_classes", 0)))]
        )
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

    def validate(self, options: dict[str, Any], item: Item) -> dict[str, Any]:
        out = {
            "steps": int_option(options, "steps", self.steps, 0, self.max_steps),
            "copies": int_option(options, "copies", self.copies, 1, self.max_copies),
            "seed": int_option(options, "seed", 0, 0, 2**31 - 1),
        }
        if self.online and (out["steps"] != self.steps or out["copies"] != self.copies):
            raise RequestError(
                400,
                f"this deployment adapts online with steps={self.steps}, "
                f"copies={self.copies}; per-request steps/copies are not accepted",
            )
        return out

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:  # type: ignore[override]
        """Gradients on: test-time training needs them (BaseHandler would use inference_mode)."""
        with torch.inference_mode(False), torch.enable_grad():
            return super().inference(batch, *args, **kwargs)

    def predict(self, items: list[Item]) -> list[dict[str, Any]]:
        probs, losses, before, recon = self._adapt(items)
        self.gauge("ConfidenceBeforeTTT", float(before.max(dim=1).values.mean()), "probability")
        self.gauge("ConfidenceAfterTTT", float(probs.max(dim=1).values.mean()), "probability")
        if losses.numel():
            self.gauge("TTTReconstructionLoss", float(losses[:, -1].mean()), "loss")
        self.gauge("ImagesPerBatch", probs.shape[0], "count")
        out, start = [], 0
        for it in items:
            k = it.images.shape[0]
            preds = [
                self._prediction(probs[i], before[i], losses[i], None if recon is None else recon[i])
                for i in range(start, start + k)
            ]
            out.append(
                {
                    "classes": self.classes,
                    "mode": "online" if self.online else "episodic",
                    **it.options,
                    "predictions": preds,
                }
            )
            start += k
        return out

    def _adapt(
        self, items: list[Item]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> in item order: probabilities after TTT (N, K), the loss before each step (N, steps), the
        probabilities without adaptation (N, K) and, episodic only, the reconstruction loss before and
        after adaptation on the same masks (N, 2; None online)."""
        if self.trainer is not None:  # online: one stream, requests in arrival order
            x = torch.cat([it.images for it in items]).to(self.device)
            with torch.no_grad():
                before = self.model.eval()(x).softmax(dim=1).cpu()  # the stream's weights so far
            results = []
            for it in items:
                results.append(self.trainer.run(it.images.to(self.device), self.stream_index))
                self.stream_index += it.images.shape[0]
            probs = torch.cat([p.cpu() for p, _ in results])
            return probs, torch.cat([loss for _, loss in results]), before, None
        from tessera.adapt.batched import adapt_batch

        clf: Any = self.model
        groups: dict[tuple[int, int, int], list[int]] = {}
        for j, it in enumerate(items):
            groups.setdefault((it.options["steps"], it.options["copies"], it.options["seed"]), []).append(j)
        per_item: dict[int, tuple[torch.Tensor, ...]] = {}
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
            fields = (
                res.probs_after,
                res.losses,
                res.probs_before,
                torch.stack([res.recon_loss_before, res.recon_loss_after], dim=1),
            )
            start = 0
            for j in members:
                k = items[j].images.shape[0]
                per_item[j] = tuple(f[start : start + k].cpu() for f in fields)
                start += k
        probs, losses, before, recon = (
            torch.cat([per_item[j][f] for j in range(len(items))]) for f in range(4)
        )
        return probs, losses, before, recon

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
