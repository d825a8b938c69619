"""The common part of Tessera's TorchServe handlers (TorchServe's ``BaseHandler`` contract).

Each handler overrides only what differs from ``ts.torch_handler.base_handler.BaseHandler``:
``initialize`` rebuilds the model from the plain-dict checkpoint in the archive through
``tessera.models.registry.from_checkpoint`` (the base would try TorchScript), ``preprocess`` guards and
decodes every request of the batch on its own, ``inference`` calls the subclass's ``predict`` once for
the valid requests of the batch, ``postprocess`` answers each request: its result, or a 4xx JSON error
with ``context.set_response_status`` for that request only. ``handle`` is TorchServe's.

Per-deployment settings come from the ``handler:`` section of the archive's ``model-config.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from serving.handlers.request import RequestError, check_options, decode_image, parse
from tessera.checkpoint import load as load_checkpoint
from tessera.errors import TesseraError
from tessera.models.embed import encoder_of
from tessera.models.registry import from_checkpoint

logger = logging.getLogger(__name__)
JSON = "application/json"


@dataclass
class Item:
    """One valid request: its index in the TorchServe batch, its images (K, 3, S, S) and options."""

    index: int
    images: torch.Tensor
    options: dict[str, Any]
    sizes: list[tuple[int, int]] = field(default_factory=list)  # each image's (width, height) as sent


@dataclass
class Batch:
    """What flows from ``preprocess`` through ``inference`` to ``postprocess``."""

    size: int
    items: list[Item] = field(default_factory=list)
    errors: dict[int, RequestError] = field(default_factory=dict)
    outputs: dict[int, Any] = field(default_factory=dict)


class TesseraHandler(BaseHandler):
    """Checkpoint loading, request guards, per-request errors and version stamps for every endpoint."""

    options: tuple[str, ...] = ()  # request options the endpoint accepts
    needs_image = True  # a request without an image is a 400

    def initialize(self, context: Any) -> None:
        """Rebuild the model from the checkpoint named by the archive (``serializedFile``)."""
        self.context = context
        self.manifest = context.manifest
        props = context.system_properties
        gpu = props.get("gpu_id")
        cuda = torch.cuda.is_available() and gpu is not None
        self.device = torch.device(f"cuda:{gpu}" if cuda else "cpu")
        self.settings: dict[str, Any] = dict((context.model_yaml_config or {}).get("handler") or {})
        if self.device.type == "cpu":
            torch.set_num_threads(worker_threads(self.settings, context.model_yaml_config or {}))
        path = os.path.join(props["model_dir"], self.manifest["model"]["serializedFile"])
        self.ckpt = load_checkpoint(path, map_location="cpu")
        self.model = self.load_model(self.ckpt).to(self.device).eval()
        self.img_size = int(encoder_of(self.model).img_size)
        self.max_images = int(self.settings.get("max_images", 16))
        self.max_pixels = int(self.settings.get("max_pixels", 4096 * 4096))
        self.stamp = {
            "model": context.model_name,
            "model_version": str(self.manifest["model"].get("modelVersion", "")),
            "data_version": _data_version(self.ckpt),  # the checkpoint's stamp, the one source
            "arch": self.ckpt["arch"],
        }
        self.setup()
        quiet_per_batch_log()
        self.initialized = True
        logger.info(
            "Tessera %s v%s ready on %s (%d torch threads)",
            self.stamp["arch"],
            self.stamp["model_version"],
            self.device,
            torch.get_num_threads(),
        )

    def load_model(self, ckpt: dict[str, Any]) -> nn.Module:
        """The model of ``ckpt`` through the library's registry (subclasses may import more archs)."""
        return from_checkpoint(ckpt)

    def setup(self) -> None:
        """Subclass hook after the model is loaded (read settings, create metrics)."""

    # -- the three steps of BaseHandler.handle ------------------------------------------------
    def preprocess(self, data: list[dict[str, Any]]) -> Batch:  # type: ignore[override]
        """Parse and guard each request on its own; a bad one becomes an error for it alone."""
        batch = Batch(size=len(data))
        for i, row in enumerate(data):
            try:
                batch.items.append(self._item(i, row))
            except RequestError as e:
                batch.errors[i] = e
        return batch

    def _item(self, index: int, row: dict[str, Any]) -> Item:
        req = parse(row, self._headers(index), index)
        check_options(req.options, self.options)
        if len(req.blobs) > self.max_images:
            raise RequestError(
                413,
                f"{len(req.blobs)} images in one request; this deployment takes at most "
                f"{self.max_images} (split the request)",
            )
        if not req.blobs and self.needs_image:
            raise RequestError(400, 'no image in the request: send image bytes or {"images": [<base64>]}')
        decoded = [
            decode_image(b, self.img_size, self.max_pixels, f"image {k}") for k, b in enumerate(req.blobs)
        ]
        images = (
            torch.stack([d[0] for d in decoded])
            if decoded
            else torch.empty(0, 3, self.img_size, self.img_size)
        )
        item = Item(index, images, {}, [d[1] for d in decoded])  # images: (K, 3, S, S)
        item.options = self.validate(req.options, item)
        return item

    def _headers(self, index: int) -> dict[str, Any]:
        try:
            return dict(self.context.get_all_request_header(index) or {})
        except (AttributeError, IndexError, TypeError):
            return {}

    def validate(self, options: dict[str, Any], item: Item) -> dict[str, Any]:
        """Check and complete the options of one request (subclasses); raise RequestError if wrong."""
        return options

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:  # type: ignore[override]
        """One ``predict`` call for every valid request of the batch."""
        if not batch.items:
            return batch
        try:
            outputs = self.predict(batch.items)
        except RequestError as e:
            batch.errors.update({it.index: e for it in batch.items})
            return batch
        except (TesseraError, RuntimeError, ValueError) as e:
            logger.exception("prediction failed")
            err = RequestError(500, f"prediction failed: {type(e).__name__}: {e}")
            batch.errors.update({it.index: err for it in batch.items})
            return batch
        for it, out in zip(batch.items, outputs, strict=True):
            if isinstance(out, RequestError):
                batch.errors[it.index] = out
            else:
                batch.outputs[it.index] = out
        return batch

    def predict(self, items: list[Item]) -> list[Any]:
        """Per valid request: a JSON-able dict, ``(bytes, content_type)``, or a RequestError for it alone."""
        raise NotImplementedError

    def postprocess(self, batch: Batch) -> list[Any]:  # type: ignore[override]
        """One answer per request, in order; errors get their status and a JSON body."""
        answers: list[Any] = []
        for i in range(batch.size):
            if i in batch.errors:
                err = batch.errors[i]
                self.context.set_response_status(err.code, err.message[:200].replace("\n", " "), i)
                self.context.set_response_content_type(i, JSON)
                answers.append(json.dumps({**err.body(), **self.stamp}))
                continue
            out = batch.outputs[i]
            if isinstance(out, tuple):  # (bytes, content type) with the versions in headers
                self.context.set_response_content_type(i, out[1])
                for key in ("model_version", "data_version"):
                    self.context.set_response_header(
                        i, f"X-Tessera-{key.replace('_', '-')}", str(self.stamp[key])
                    )
                answers.append(out[0])
            else:
                self.context.set_response_content_type(i, JSON)
                answers.append(self.encode({**self.stamp, **out}))
        return answers

    def encode(self, answer: dict[str, Any]) -> str | bytes:
        """The JSON body of one successful answer (a subclass may use a faster encoder)."""
        return json.dumps(answer)

    # -- metrics ------------------------------------------------------------------------------
    def gauge(self, name: str, value: float, unit: str = "value") -> None:
        """Report a per-model gauge (on ``/metrics`` in Prometheus mode when listed in metrics.yaml)."""
        metrics = getattr(self.context, "metrics", None)
        if metrics is None:
            return
        try:
            metrics.add_metric(
                name,
                float(value),
                unit,
                None,
                [Dimension("ModelVersion", self.stamp["model_version"])],
                MetricTypes.GAUGE,
            )
        except Exception:  # noqa: BLE001 - a metric must never fail a request
            logger.warning("could not report metric %s", name, exc_info=True)


def worker_threads(settings: dict[str, Any], model_yaml: dict[str, Any]) -> int:
    """Intra-op threads for one CPU worker: ``torch_threads`` if set, else the cores over the workers.

    torch starts one thread per core in every process; two workers on two cores would then run four
    threads that spin-wait for each other. Dividing the cores keeps workers x threads = cores.
    """
    threads = int(settings.get("torch_threads") or 0)
    if threads > 0:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = max(1, int(model_yaml.get("maxWorkers") or model_yaml.get("minWorkers") or 1))
    return max(1, cores // workers)


class _PerBatchLine(logging.Filter):
    """Drops the line TorchServe's worker logs for every batch ("Backend received inference at: <t>")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Backend received inference"))


def quiet_per_batch_log() -> None:
    """Stop TorchServe's per-batch line at its source, the worker (once per process).

    The worker writes it to stdout with the root logger (``ts.protocol.otf_message_handler``); the
    frontend reads every worker line, and before this filter Tessera's log4j2.xml dropped this one
    there with a regex. Here it never leaves the worker: neither the worker's write nor the
    frontend's read, regex and log call happen once per batch. Other lines, the handlers' included,
    are untouched.
    """
    root = logging.getLogger()
    if not any(isinstance(f, _PerBatchLine) for f in root.filters):
        root.addFilter(_PerBatchLine())


def _data_version(ckpt: dict[str, Any]) -> str:
    dv = ckpt.get("data_version")
    if isinstance(dv, dict):
        return str(dv.get("md5") or dv)
    return str(dv) if dv else "unknown"
