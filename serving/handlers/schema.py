"""The request models, limits and admission rules of every Tessera endpoint (runtime-neutral).

Nothing here imports TorchServe: the handlers (``serving/handlers/*.py``) are thin adapters from
TorchServe's batch contract to these functions, so another server (or a test) can reuse them as is.

* :class:`Limits`: how large a request may be (body bytes, images, decoded pixels), from the
  ``handler:`` section of the archive's ``model-config.yaml``.
* One pydantic model per endpoint (:class:`EncoderRequest`, :class:`GeneratorRequest`,
  :class:`TTTRequest`; ``extra="forbid"``, every field typed and bounded). The factories
  (:func:`generator_model`, :func:`ttt_model`) tighten the bounds to one deployment's caps.
  :func:`validate` turns a validation error into a 400 that names the field and its range.
* :class:`TTTDeployment`: the TTT endpoint's choice of method and budget for a request
  (:func:`tessera.adapt.policy.resolve`), and :class:`WorkBudget`, its admission control: a request's
  work (images x steps x copies) against the response timeout, calibrated on the deployed model.
"""

from __future__ import annotations

import functools
import math
import reprlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from serving.handlers.request import MAX_JSON_ITEMS, RequestError
from tessera.errors import TesseraError

MiB = 1 << 20
# The handler refuses (413, JSON) a body above this; TorchServe's ``max_request_size``
# (serving/config/*.properties) is set above it, so such a body reaches the handler at all.
DEFAULT_MAX_BODY_BYTES = 10 * MiB
FRONTEND_MAX_REQUEST_SIZE = 16 * MiB  # the properties' max_request_size: above it, TorchServe's own 413
DEFAULT_MAX_IMAGES = 16
DEFAULT_MAX_PIXELS = 4096 * 4096
SEED_MAX = 2**31 - 1
COORD_MAX = 1e7  # |box coordinate| in pixels of the image sent (images have at most max_pixels)
# absolute ceilings of the per-deployment caps (a model-config.yaml cannot raise them further)
MAX_SAMPLES_CEIL, MAX_STEPS_CEIL, MAX_COPIES_CEIL = 1024, 10_000, 4096
_B64_MAX = 4 * (FRONTEND_MAX_REQUEST_SIZE // 3 + 1)  # a base64 string longer than any body allowed


def _not_bool(value: Any) -> Any:
    """JSON ``true`` is not the number 1 (pydantic's lax mode would take it as one)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


_NUMBER = BeforeValidator(_not_bool)
B64 = Annotated[str, Field(min_length=1, max_length=_B64_MAX)]
Seed = Annotated[int, _NUMBER, Field(ge=0, le=SEED_MAX)]
Coord = Annotated[float, _NUMBER, Field(ge=-COORD_MAX, le=COORD_MAX, allow_inf_nan=False)]


@dataclass(frozen=True)
class Limits:
    """How large one request may be: body bytes (413), images (413), decoded pixels per image (413)."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_images: int = DEFAULT_MAX_IMAGES
    max_pixels: int = DEFAULT_MAX_PIXELS

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Limits:
        """The ``handler:`` section's ``max_body_bytes``, ``max_images``, ``max_pixels`` (else defaults)."""
        out = cls(
            max_body_bytes=int(settings.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES)),
            max_images=int(settings.get("max_images", DEFAULT_MAX_IMAGES)),
            max_pixels=int(settings.get("max_pixels", DEFAULT_MAX_PIXELS)),
        )
        if min(out.max_body_bytes, out.max_images, out.max_pixels) < 1:
            raise TesseraError(f"handler limits must be positive, got {out}")
        return out


# -- the request models ----------------------------------------------------------------------------
class ImageRequest(BaseModel):
    """What every endpoint takes: images as base64 (``image``, ``images``); nothing unknown, no nulls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: B64 | None = None
    images: Annotated[list[B64], Field(max_length=MAX_JSON_ITEMS)] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("null is not a value here (leave the field out for its default)")
        return value

    def encoded_images(self) -> list[tuple[str, str]]:
        """(field name, base64 text) of each image in the request body, in order."""
        out = [("image", self.image)] if self.image is not None else []
        return out + [(f"images[{i}]", s) for i, s in enumerate(self.images or [])]


class EncoderRequest(ImageRequest):
    """The encoder takes images only."""


class GeneratorRequest(ImageRequest):
    """Samples (``n``, ``seed``, ``format``) and at most one inpainting region."""

    n: Annotated[int, _NUMBER, Field(ge=1, le=MAX_SAMPLES_CEIL)] = 8
    seed: Seed = 0
    format: Literal["json", "png"] = "json"
    box: Annotated[list[Coord], Field(min_length=4, max_length=4)] | None = None
    outpaint: Annotated[float, _NUMBER, Field(ge=0.01, le=0.99, allow_inf_nan=False)] | None = None
    mask: B64 | None = None

    @model_validator(mode="after")
    def _one_region(self) -> GeneratorRequest:
        given = self.regions()
        if len(given) > 1:
            raise ValueError(f"give one region, not {given}")
        return self

    def regions(self) -> list[str]:
        return [k for k in ("box", "outpaint", "mask") if getattr(self, k) is not None]


class TTTRequest(ImageRequest):
    """The TTT classifier: an explicit method and budget (else the policy's), and the masks' seed."""

    method: str | None = None
    steps: Annotated[int, _NUMBER, Field(ge=0, le=MAX_STEPS_CEIL)] | None = None
    copies: Annotated[int, _NUMBER, Field(ge=1, le=MAX_COPIES_CEIL)] | None = None
    seed: Seed = 0


M = TypeVar("M", bound=ImageRequest)


@functools.lru_cache(maxsize=64)
def generator_model(max_samples: int) -> type[GeneratorRequest]:
    """:class:`GeneratorRequest` with ``n`` capped at the deployment's ``max_samples``."""
    cap = max(1, min(int(max_samples), MAX_SAMPLES_CEIL))
    n = Annotated[int, _NUMBER, Field(ge=1, le=cap)]
    return create_model("GeneratorRequest", __base__=GeneratorRequest, n=(n, min(8, cap)))


@functools.lru_cache(maxsize=64)
def ttt_model(max_steps: int, max_copies: int, methods: tuple[str, ...]) -> type[TTTRequest]:
    """:class:`TTTRequest` with the deployment's caps on ``steps``/``copies`` and its ``methods``."""
    steps = Annotated[int, _NUMBER, Field(ge=0, le=min(int(max_steps), MAX_STEPS_CEIL))]
    copies = Annotated[int, _NUMBER, Field(ge=1, le=min(int(max_copies), MAX_COPIES_CEIL))]
    method = Literal[methods]  # type: ignore[valid-type]
    return create_model(
        "TTTRequest",
        __base__=TTTRequest,
        steps=(steps | None, None),
        copies=(copies | None, None),
        method=(method | None, None),
    )


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 40, 40, 4, 4, 2


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any]:
    info = model.model_fields.get(name)
    if info is None:
        return None, None
    lo = hi = None
    for meta in [*_metadata(info.annotation), *info.metadata]:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return lo, hi


def _metadata(annotation: Any) -> list[Any]:
    """The constraints inside ``Annotated[...] | None`` (how the optional bounded fields are typed)."""
    out: list[Any] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        for meta in getattr(arg, "__metadata__", ()) or ():
            out += list(getattr(meta, "metadata", [])) + [meta]
    return out


def _repr(value: Any) -> str:
    try:
        return _short.repr(value)
    except ValueError:  # an int too long to print
        return f"<{type(value).__name__}>"


CAPPED = ("n", "steps", "copies")  # the fields whose upper bound is the deployment's cap


def _message(model: type[BaseModel], err: Mapping[str, Any]) -> str:
    loc = tuple(err.get("loc") or ())
    where, kind, value = _where(loc), str(err.get("type", "")), err.get("input")
    got, msg = _repr(value), str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:  # a model-level rule (e.g. one region only)
        return msg
    if kind == "value_error" and value is None:
        return f"option {where!r}: {msg}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"option {where!r} must be a finite number, got {got}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        lo, hi = _bounds(model, str(loc[0])) if len(loc) == 1 else (None, None)
        ctx = err.get("ctx") or {}
        lo = ctx.get("ge", ctx.get("gt")) if lo is None else lo
        hi = ctx.get("le", ctx.get("lt")) if hi is None else hi
        cap = " (the deployment's cap)" if loc[0] in CAPPED else ""
        if lo is not None and hi is not None:
            return f"option {where!r} = {got} is outside [{lo}, {hi}]{cap}"
        return f"option {where!r} = {got} is outside its range ({msg})"
    if kind == "value_error" and isinstance(value, bool):
        return f"option {where!r} must be a number, got {got}"
    if kind.startswith("int_"):
        return f"option {where!r} must be an integer, got {got}"
    if kind.startswith("float_") or kind == "finite_number" or "number" in msg:
        return f"option {where!r} must be a finite number, got {got}"
    if kind == "literal_error":
        return f"option {where!r} = {got}: use one of {(err.get('ctx') or {}).get('expected')}"
    if kind in ("string_type", "string_too_short", "string_too_long"):
        return f"option {where!r} must be a non-empty base64 string, got {type(value).__name__}"
    return f"option {where!r}: {msg} (got {got})"


def validate(model: type[M], fields: Mapping[str, Any]) -> M:
    """``fields`` (a JSON object, or the option fields of a form) -> the endpoint's model, else a 400
    that names every wrong field (unknown ones together, with the fields this endpoint accepts)."""
    try:
        return model.model_validate(dict(fields))
    except ValidationError as e:
        errors = e.errors(include_url=False)
    unknown = [str(x["loc"][0])[:40] for x in errors if x["type"] == "extra_forbidden" and x["loc"]]
    parts = [_message(model, x) for x in errors if x["type"] != "extra_forbidden"][:3]
    if unknown:
        accepted = sorted(model.model_fields)
        parts.insert(0, f"unknown option(s) {sorted(unknown)[:5]}; this endpoint accepts {accepted}")
    raise RequestError(400, "; ".join(parts) or "invalid request") from None


# -- the generator's region ------------------------------------------------------------------------
def scale_box(box: list[float], size: tuple[int, int], side: int) -> list[int]:
    """A box in pixels of the image sent (``size`` = its width, height) -> pixels of the model's
    ``side`` x ``side`` input (the image was centre-cropped to a square, then resized), clamped."""
    w, h = size
    square = min(w, h)
    left, top, k = (w - square) // 2, (h - square) // 2, side / square
    offsets = (left, top, left, top)
    return [min(side, max(0, round((float(v) - o) * k))) for v, o in zip(box, offsets, strict=True)]


# -- the TTT classifier: method, budget and admission ------------------------------------------------
@dataclass(frozen=True)
class TTTDeployment:
    """What one TTT deployment serves: its default budget, caps, policy and mode."""

    steps: int
    copies: int
    max_steps: int
    max_copies: int
    policy: Mapping[str, Any] | None = None
    default_method: str = "none"
    online: bool = False

    def methods(self) -> tuple[str, ...]:
        from tessera.adapt.policy import METHODS_SERVED

        return (*METHODS_SERVED, "ttt_mae_online") if self.online else METHODS_SERVED

    def model(self) -> type[TTTRequest]:
        return ttt_model(self.max_steps, self.max_copies, self.methods())

    def plan(self, req: TTTRequest) -> dict[str, Any]:
        """The method, who chose it, the policy version and the budget for ``req``; 400 if refused."""
        from tessera.adapt.policy import NONE, TTT, resolve

        given = req.model_fields_set
        if self.online:
            if (
                (req.method is not None and req.method != "ttt_mae_online")
                or (req.steps is not None and req.steps != self.steps)
                or (req.copies is not None and req.copies != self.copies)
            ):
                raise RequestError(
                    400,
                    f"this deployment adapts online with steps={self.steps}, copies={self.copies}; "
                    "per-request methods and budgets are not accepted",
                )
            return {
                "method": "ttt_mae_online",
                "method_source": "server",
                "policy_version": None,
                "steps": self.steps,
                "copies": self.copies,
                "seed": req.seed,
            }
        budget = {
            "steps": self.steps if req.steps is None else req.steps,
            "copies": self.copies if req.copies is None else req.copies,
        }
        asked = {k: v for k, v in budget.items() if k in given}
        try:
            decision = resolve(self.policy, req.method, asked, self.default_method, budget)
        except (TesseraError, ValueError) as e:
            raise RequestError(400, f"option 'method': {e}") from e
        ttt = decision.method == TTT
        plan: dict[str, Any] = {
            "method": decision.method,
            "method_source": decision.source,
            "policy_version": decision.policy_version,
            "steps": min(int(decision.budget.get("steps", 0)), self.max_steps) if ttt else 0,
            "copies": min(int(decision.budget.get("copies", self.copies)), self.max_copies),
            "seed": req.seed,
        }
        if decision.method not in (NONE, TTT):  # normstat, tent_episodic: what the policy measured
            plan["settings"] = dict(decision.budget)
        return plan


@dataclass(frozen=True)
class WorkBudget:
    """Admission control: the test-time-training work one request may ask for.

    Work is counted in units of images x steps x copies (one SGD step on one masked copy of one
    image), ``seconds_per_unit`` is measured on the deployed model at start-up (:func:`calibrate`),
    and ``max_units`` is what fits in ``seconds`` (a share of the response timeout, see
    :func:`budget_seconds`), never below the deployment's default budget for ``max_images`` images
    (a request that asks for no more than the defaults is always admitted).
    """

    max_units: int
    seconds_per_unit: float
    seconds: float

    def check(self, images: int, steps: int, copies: int) -> None:
        """Raise a 400 naming the largest budget allowed if ``images x steps x copies`` is over it."""
        units = images * steps * copies
        if units <= self.max_units:
            return
        most_steps = self.max_units // max(1, images * copies)
        most_images = self.max_units // max(1, steps * copies)
        fewer = f", or at most {most_images} image(s) at steps={steps}" if most_images else ""
        raise RequestError(
            400,
            f"test-time training of {images} image(s) x {steps} steps x {copies} copies = {units} "
            f"units is over this deployment's budget: at most {self.max_units} units "
            f"(images x steps x copies) per request, about {self.seconds:.1f} s; "
            f"here steps <= {most_steps} at copies={copies}{fewer}",
        )


def budget_seconds(response_timeout_s: float, batch_size: int, fraction: float = 0.5) -> float:
    """The seconds of work one request may take: ``fraction`` of TorchServe's response timeout (a
    batch over it restarts the worker) shared by a full batch of such requests. The other half
    covers a batch answered request by request after a failed batched call, and noise."""
    return max(0.0, float(response_timeout_s)) * float(fraction) / max(1, int(batch_size))


def calibrate(
    run: Callable[[], Any], units: int, seconds: float, floor: int, ceiling: int, repeats: int = 2
) -> WorkBudget:
    """Time ``run`` (``units`` of work on the deployed model) and size the budget to ``seconds``,
    within ``[floor, ceiling]``. The first call warms up; the fastest of ``repeats`` timed calls
    counts (workers starting side by side slow each other down for a moment)."""
    run()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    per_unit = max(min(times) / max(1, units), 1e-9)
    fits = seconds / per_unit
    return WorkBudget(
        max(floor, min(ceiling, int(fits) if math.isfinite(fits) else ceiling)), per_unit, seconds
    )
