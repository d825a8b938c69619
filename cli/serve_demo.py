"""The end of ``make demo``: serve the champion release and show three requests.

``serve_champion(corrupted=..., out=...)`` starts (or reuses) the local TorchServe, deploys every
bundle of the release holding ``champion`` (deploy flow: package, register, smoke, default), then
prints an embedding's size, writes a generator sample grid to disk, and prints a TTT prediction on a
corrupted test image with the class and confidence before and after adaptation.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from serving import management, server
from tessera import names

BUNDLES = tuple(names.BUNDLES.values())
SUFFIXES = (".png", ".jpg", ".jpeg")


def corrupted_image(corrupted: str | Path | None, test: str | Path | None = None) -> tuple[bytes, str]:
    """PNG bytes of one corrupted test image and where it came from.

    The first image of ``data/<name>-c/gaussian_noise/<highest severity>/`` (or of the first corruption
    there is) when that set exists, else a test image with Gaussian noise added here (sigma 0.2).
    """
    import numpy as np
    from PIL import Image

    root = Path(corrupted) if corrupted else None
    if root is not None and root.is_dir():
        search = root / "gaussian_noise" if (root / "gaussian_noise").is_dir() else root
        files = sorted(p for p in search.rglob("*") if p.suffix.lower() in SUFFIXES)
        if files:  # <corruption>/<severity>/<class>/<id>: the first image of the highest severity
            severity = max(p.relative_to(root).parts[1] for p in files if len(p.relative_to(root).parts) == 4)
            top = next(p for p in files if p.relative_to(root).parts[1:2] == (severity,))
            return top.read_bytes(), str(top)
    pool = sorted(p for p in Path(test).rglob("*") if p.suffix.lower() in SUFFIXES) if test else []
    if pool:
        arr = np.asarray(Image.open(pool[0]).convert("RGB"), dtype=np.float32) / 255.0
        src = f"{pool[0]} + gaussian noise 0.2"
    else:
        arr, src = np.full((32, 32, 3), 0.5, np.float32), "grey image + gaussian noise 0.2"
    noisy = np.clip(arr + np.random.default_rng(0).normal(0, 0.2, arr.shape), 0, 1)
    buf = io.BytesIO()
    Image.fromarray((noisy * 255 + 0.5).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue(), src


def ensure_server(
    home: str | Path = server.DEFAULT_HOME, config: str = "local", port: int = 8080
) -> server.Server:
    """The TorchServe recorded in ``home`` if it answers, else a new one on ``port`` (+1, +2)."""
    try:
        srv = server.Server.load(Path(home))
        if not srv.ping():
            raise server.ServingError("recorded server is down")
    except server.ServingError:
        srv = server.start(
            Path(home), config, server.Ports(port, port + 1, port + 2, port - 1010, port - 1009)
        )
    return srv


def serve_champion(
    corrupted: str | Path | None = None,
    test: str | Path | None = None,
    out: str | Path = "runs/serving",
    home: str | Path = server.DEFAULT_HOME,
    config: str = "local",
    port: int = 8080,
) -> dict[str, Any]:
    """Serve the champion release and print three example requests; returns what was printed."""
    from flows.deploy import deploy

    home, out = Path(home), Path(out)
    srv = ensure_server(home, config, port)
    deployed: dict[str, Any] = {}
    for name in BUNDLES:
        try:
            deployed[name] = deploy(model=name, alias="champion", home=str(home))
        except Exception as e:  # noqa: BLE001 - a missing bundle should not hide the others
            print(f"[serve] {name}: not deployed ({type(e).__name__}: {e})")
    shown: dict[str, Any] = {"deployed": {k: v["version"] for k, v in deployed.items()}}
    probe, headers = management.probe_request("encoder")
    if names.BUNDLES["encoder"] in deployed:
        ans = management.predict(srv, names.BUNDLES["encoder"], probe, headers).json()
        shown["embedding_size"] = len(ans["embeddings"][0])
        print(
            f"[serve] POST /predictions/tessera-encoder (a PNG) -> embedding of size "
            f"{shown['embedding_size']}"
            f" (model v{ans['model_version']}, data {ans['data_version']})"
        )
    if names.BUNDLES["generator"] in deployed:
        r = management.predict(
            srv,
            names.BUNDLES["generator"],
            json.dumps({"n": 16, "seed": 0, "format": "png"}).encode(),
            {"Content-Type": "application/json"},
        )
        out.mkdir(parents=True, exist_ok=True)
        grid = out / "served_samples.png"
        grid.write_bytes(r.content)
        shown["sample_grid"] = str(grid)
        print(
            f"[serve] POST /predictions/tessera-generator {{n: 16, format: png}} -> {grid} "
            f"(model v{r.headers.get('X-Tessera-model-version')})"
        )
    if names.BUNDLES["classifier"] in deployed:
        shown["ttt"] = _policy_request(srv, corrupted, test)
    print(f"[serve] TorchServe keeps running at {srv.inference_url} (stop: tessera serve down)")
    return shown


def corrupted_images(corrupted: str | Path | None, limit: int = 64) -> list[Path]:
    """Up to ``limit`` corrupted test images, the most severe first (where a policy can matter)."""
    root = Path(corrupted) if corrupted else None
    if root is None or not root.is_dir():
        return []
    files = [
        p for p in root.rglob("*") if p.suffix.lower() in SUFFIXES and len(p.relative_to(root).parts) == 4
    ]
    files.sort(
        key=lambda p: (
            -int(p.relative_to(root).parts[1]) if p.relative_to(root).parts[1].isdigit() else 0,
            str(p),
        )
    )
    return files[:limit]


def _policy_request(
    srv: server.Server, corrupted: str | Path | None, test: str | Path | None
) -> dict[str, Any]:
    """Ask the TTT classifier as a client would (no options: the release's policy decides) and show
    an image on which the policy changed the answer, or say that the policy is ``none`` and why."""
    name = names.BUNDLES["classifier"]
    headers = {"Content-Type": "image/png"}
    candidates = [(p.read_bytes(), str(p)) for p in corrupted_images(corrupted)] or [
        corrupted_image(corrupted, test)
    ]
    ans, src = None, ""
    for img, where in candidates:
        ans, src = management.predict(srv, name, img, headers).json(), where
        p = ans["predictions"][0]
        if ans.get("method") == "none" or p["class"] != p["before"]["class"]:
            break
    assert ans is not None
    p = ans["predictions"][0]
    stamp = f"(model v{ans['model_version']}, data {ans['data_version']}, policy {ans.get('policy_version')})"
    if ans.get("method") == "none":
        print(f"[serve] POST /predictions/{name} ({src}) -> {p['class']} ({p['confidence']:.2f}) {stamp}")
        print("[serve] the release's adaptation policy is `none`: the answer is the frozen model's, because")
        print(f"[serve]   {_policy_reason(srv, name)}")
    else:
        changed = p["class"] != p["before"]["class"]
        print(
            f"[serve] POST /predictions/{name} ({src}) -> policy {ans['method']} ({ans['steps']} steps x "
            f"{ans['copies']} copies, {ans['method_source']}): {p['before']['class']} "
            f"({p['before']['confidence']:.2f}) -> {p['class']} ({p['confidence']:.2f})"
            f"{'' if changed else ' (no image among the first tried changed its answer)'}; "
            f"{_loss_text(p['loss'])} {stamp}"
        )
    return {
        "image": src,
        "method": ans.get("method"),
        "policy_version": ans.get("policy_version"),
        "before": [p["before"]["class"], p["before"]["confidence"]],
        "after": [p["class"], p["confidence"]],
        "loss": p["loss"],
    }


def _policy_reason(srv: server.Server, name: str) -> str:
    """The policy's reason, from the served version's checkpoint in the registry."""
    from lifecycle import release

    try:
        ref = release.resolve(f"models:/{name}@champion")
        from tessera import checkpoint

        return str(((checkpoint.load(ref.path).get("extra") or {}).get("policy") or {}).get("reason", "-"))
    except Exception as e:  # noqa: BLE001 - the demo's explanation must not fail the demo
        return f"(its reason could not be read: {e})"


def _loss_text(loss: dict[str, Any]) -> str:
    """The TTT answer's reconstruction loss in words: before/after on the same masks when given."""
    if loss.get("before") is not None and loss.get("after") is not None:
        return f"MAE loss on the same masks {loss['before']:.4f} -> {loss['after']:.4f}"
    return f"MAE loss at each step (fresh masks each step) {[round(v, 4) for v in loss['per_step']]}"
