"""The common part of Tessera's TorchServe handlers (TorchServe's ``BaseHandler`` contract).

Each handler overrides only what differs from ``ts.torch_handler.base_handler.BaseHandler``:
``initialize`` rebuilds the model from the plain-dict checkpoint in the archive through
``tessera.models.registry.from_checkpoint`` (the base would try TorchScript), ``preprocess`` guards,
validates (the endpoint's model in ``serving.handlers.schema``) and decodes every request of the batch
on its own, ``inference`` calls the subclass's ``predict`` once for the valid requests of the batch,
``postprocess`` answers each request: its result, or a JSON error with ``context.set_response_status``
for that request only.

Every request is isolated: any exception while one request is read, validated, decoded or predicted
answers that request alone (a 4xx when the request is at fault, else a 500 logged with its request
id); when the batched ``predict`` call fails, each request of the batch is predicted alone, so one bad
request cannot fail its batch-mates. ``handle`` is TorchServe's three steps, nothing else.

Per-deployment settings come from the ``handler:`` section of the archive's ``model-config.yaml``.
The logic lives in ``serving.handlers.request`` and ``serving.handlers.schema`` (no TorchServe import).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from serving.handlers.request import RequestError, b64, decode_image, parse
from serving.handlers.schema import EncoderRequest, ImageRequest, Limits, validate
from tessera import threads
from tessera.checkpoint import load as load_checkpoint
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

    needs_image = True  # a request without an image is a 400
    retry_alone = True  # a failed batched ``predict`` is retried request by request

    def initialize(self, context: Any) -> None:
        """Rebuild the model from the checkpoint named by the archive (``serializedFile``)."""
        # The worker hands the handler each body as bytes: TorchServe's own json.loads would decode a
        # body before any size check (and turn `null` or `1000000000` into values, not bytes). The
        # worker reads this variable for every request it receives (ts.protocol.otf_message_handler).
        os.environ["TS_DECODE_INPUT_REQUEST"] = "false"
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
        self.limits = Limits.from_settings(self.settings)
        self.max_images, self.max_pixels = self.limits.max_images, self.limits.max_pixels
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

    def request_model(self) -> type[ImageRequest]:
        """The endpoint's request model (``serving.handlers.schema``; subclasses)."""
        return EncoderRequest

    def plan(self, req: Any, item: Item) -> dict[str, Any]:
        """The options of one validated request, completed (subclasses); raise RequestError if refused."""
        return {}

    # -- TorchServe's handle: preprocess, inference, postprocess ----------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        """BaseHandler.handle without its describe and explain paths: a request header ``explain`` or
        ``describe`` would send the whole batch there (TorchServe reads them from request 0), and
        neither is implemented, so every request is a prediction."""
        start = time.time()
        self.context = context
        out = self.postprocess(self.inference(self.preprocess(data)))
        try:
            context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        except Exception:  # noqa: BLE001 - a metric must never fail a batch
            logger.warning("could not report HandlerTime", exc_info=True)
        return out

    def preprocess(self, data: list[dict[str, Any]]) -> Batch:  # type: ignore[override]
        """Parse, validate and decode each request on its own; a bad one becomes an error for it alone."""
        batch = Batch(size=len(data))
        for i, row in enumerate(data):
            try:
                batch.items.append(self._item(i, row))
            except Exception as e:  # noqa: BLE001 - isolation: this request only
                batch.errors[i] = self._fault(e, i, "reading the request")
        return batch

    def _item(self, index: int, row: Any) -> Item:
        row = row if isinstance(row, dict) else {"body": row}
        req = parse(row, self._headers(index), index, self.limits.max_body_bytes)
        opts = validate(self.model_of_requests, req.options)
        encoded = opts.encoded_images()
        count = len(req.blobs) + len(encoded)
        if count > self.max_images:
            raise RequestError(
                413,
                f"{count} images in one request; this deployment takes at most "
                f"{self.max_images} (split the request)",
            )
        if not count and self.needs_image:
            raise RequestError(400, 'no image in the request: send image bytes or {"images": [<base64>]}')
        named = [("image" if len(req.blobs) == 1 else f"image {k}", b) for k, b in enumerate(req.blobs)]
        named += [(name, b64(text, name)) for name, text in encoded]
        decoded = [decode_image(b, self.img_size, self.max_pixels, name) for name, b in named]
        images = (
            torch.stack([d[0] for d in decoded])
            if decoded
            else torch.empty(0, 3, self.img_size, self.img_size)
        )
        item = Item(index, images, {}, [d[1] for d in decoded])  # images: (K, 3, S, S)
        item.options = self.plan(opts, item)
        return item

    @property
    def model_of_requests(self) -> type[ImageRequest]:
        model = getattr(self, "_request_model", None)
        if model is None:
            model = self._request_model = self.request_model()
        return model

    def _headers(self, index: int) -> dict[str, Any]:
        try:
            return dict(self.context.get_all_request_header(index) or {})
        except (AttributeError, IndexError, TypeError, ValueError):
            return {}

    def _request_id(self, index: int) -> str:
        try:
            return str(self.context.get_request_id(index))
        except Exception:  # noqa: BLE001 - only for the log line
            return f"#{index}"

    def _fault(self, e: BaseException, index: int, stage: str) -> RequestError:
        """The answer to one request that raised ``e``: its own RequestError, else a 500 (logged)."""
        rid = self._request_id(index)
        if isinstance(e, RequestError):
            if e.code >= 500:
                logger.error("request %s: %s: %s", rid, stage, e.message)
            return e
        logger.error("request %s: %s failed", rid, stage, exc_info=e)
        detail = f"{type(e).__name__}: {str(e)[:160]}"
        return RequestError(500, f"{stage} failed on the server ({detail}); request id {rid}")

    def inference(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:  # type: ignore[override]
        """One ``predict`` call for every valid request of the batch; if it fails, one per request."""
        if not batch.items:
            return batch
        try:
            self._collect(batch, batch.items, self.predict(batch.items))
            return batch
        except Exception as e:  # noqa: BLE001 - isolation: retried request by request below
            if len(batch.items) == 1 or not self.retry_alone:
                for it in batch.items:
                    batch.errors[it.index] = self._fault(e, it.index, "prediction")
                return batch
            logger.warning(
                "batched prediction of %d requests failed (%s: %s); answering each alone",
                len(batch.items),
                type(e).__name__,
                str(e)[:200],
            )
        for it in batch.items:
            try:
                self._collect(batch, [it], self.predict([it]))
            except Exception as e:  # noqa: BLE001 - this request only
                batch.errors[it.index] = self._fault(e, it.index, "prediction")
        return batch

    @staticmethod
    def _collect(batch: Batch, items: list[Item], outputs: list[Any]) -> None:
        if len(outputs) != len(items):
            raise RuntimeError(f"predict answered {len(outputs)} results for {len(items)} requests")
        for it, out in zip(items, outputs, strict=True):
            if isinstance(out, RequestError):
                batch.errors[it.index] = out
            else:
                batch.outputs[it.index] = out

    def predict(self, items: list[Item]) -> list[Any]:
        """Per valid request: a JSON-able dict, ``(bytes, content_type)``, or a RequestError for it alone."""
        raise NotImplementedError

    def postprocess(self, batch: Batch) -> list[Any]:  # type: ignore[override]
        """One answer per request, in order; errors get their status and a JSON body."""
        answers: list[Any] = []
        for i in range(batch.size):
            try:
                answers.append(self._answer(batch, i))
            except Exception as e:  # noqa: BLE001 - this request only
                answers.append(self._error(i, self._fault(e, i, "writing the answer")))
        return answers

    def _answer(self, batch: Batch, i: int) -> Any:
        if i in batch.errors:
            return self._error(i, batch.errors[i])
        out = batch.outputs[i]
        if isinstance(out, tuple):  # (bytes, content type) with the versions in headers
            self.context.set_response_content_type(i, out[1])
            for key in ("model_version", "data_version"):
                self.context.set_response_header(
                    i, f"X-Tessera-{key.replace('_', '-')}", str(self.stamp[key])
                )
            return out[0]
        self.context.set_response_content_type(i, JSON)
        return self.encode({**self.stamp, **out})

    def _error(self, i: int, err: RequestError) -> str:
        # the reason phrase travels in the HTTP status line: printable ASCII only
        phrase = "".join(c if " " <= c <= "~" else "?" for c in err.message[:200])
        self.context.set_response_status(err.code, phrase, i)
        self.context.set_response_content_type(i, JSON)
        return json.dumps({**err.body(), **self.stamp})

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
    """Intra-op threads for one CPU worker: ``torch_threads`` if set, else ``tessera.threads``' rule.

    torch starts one thread per core in every process; two workers on two cores would then run four
    threads that spin-wait for each other. The rule (``tessera.threads.choose``) shares the cores
    among the deployment's ``maxWorkers``, with one thread on <= 2 cores or a loaded machine;
    ``TESSERA_TORCH_THREADS`` overrides it when ``torch_threads`` is 0.
    """
    given = int(settings.get("torch_threads") or 0)
    workers = max(1, int(model_yaml.get("maxWorkers") or model_yaml.get("minWorkers") or 1))
    return threads.threads_for(workers, override=given if given > 0 else None)


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
