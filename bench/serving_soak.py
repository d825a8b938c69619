"""Serving soak: one real TorchServe under minutes of mixed valid and hostile load.

An encoder (``mae_vit_micro_patch4``) and a TTT classifier on it (10 classes) are packaged and served
by one TorchServe with its own ports and a temporary home. ``--clients`` threads (``requests``
sessions) alternate single-image PNG requests to the encoder and TTT requests (``steps`` 2,
``copies`` 2):

* phase A (reference): ``--reference-s`` seconds of valid requests only -> p99 latency;
* phase B (soak): ``--seconds`` seconds where each request is, with probability ``--hostile``, one
  drawn from a list of hostile cases (null or number bodies, deep nesting, malformed JSON, invalid
  UTF-8, an 11 MiB body, bad base64, unknown options, a TTT request far over the work budget, ...).
  The RSS of the frontend (Java) and of every worker is sampled every ``--sample-s`` seconds.

Counted, never asserted: every valid request must be a 200, every hostile one a 4xx (413 for the
big body); 5xx, dropped connections and worker restarts (a changed worker PID) are reported.
The last lines are ``RESULT <name> <value> <unit>``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/serving_soak.py --seconds 180
        [--reference-s 30] [--clients 4] [--hostile 0.3] [--sample-s 15]
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# this file is in bench/: drop its folder from the path so `serving` is the package, not bench/serving.py
sys.path[:] = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]

import requests  # noqa: E402

from serving import management, package, server  # noqa: E402
from tessera import checkpoint  # noqa: E402
from tessera.models import build  # noqa: E402
from tessera.models.registry import config_of  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_serving", Path(__file__).with_name("serving.py"))
assert _spec is not None and _spec.loader is not None
bench_serving = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_serving)  # its _ttt_checkpoint and _pct

ARCH, ENC, TTT = "mae_vit_micro_patch4", "soak-enc", "soak-ttt"
JSON = {"Content-Type": "application/json"}
PNG = {"Content-Type": "image/png"}
Request = tuple[
    str, str, bytes, dict[str, str], int | None
]  # label, model, body, headers, status (None: 4xx)
VALID: list[Request] = []  # filled once in main, shared by the clients
HOSTILE: list[Request] = []


@dataclass
class Rec:
    phase: str
    label: str
    valid: bool
    status: int | None  # None: the connection dropped (a requests exception)
    ms: float
    ok: bool  # a 200 if valid, else a 4xx (or the status the case wants)
    text: str  # the first 160 characters of the answer, or the exception


def _png(seed: int) -> bytes:
    return management.probe_request("encoder", seed=seed)[0]  # a 32 x 32 noise PNG


def _b64(seed: int) -> str:
    return base64.b64encode(_png(seed)).decode("ascii")


def _valid(i: int) -> Request:
    """The ``i``-th valid request of a client: the encoder and the TTT classifier in turn."""
    if i % 2 == 0:
        return ("valid encoder", ENC, _png(i), PNG, 200)
    body = json.dumps({"image": _b64(i), "steps": 2, "copies": 2}).encode()
    return ("valid ttt", TTT, body, JSON, 200)


def _hostile() -> list[Request]:
    """Hostile requests: the common ones to both endpoints, the TTT options to the TTT classifier."""
    img = _b64(7)
    common: list[tuple[str, bytes, dict[str, str], int | None]] = [
        ("null body", b"null", JSON, None),
        ("number body", b"1000000000", JSON, None),
        ("deep nesting", b"[" * 200_000, JSON, None),
        ("malformed JSON", b'{"images": [', JSON, None),
        ("invalid UTF-8", b'{"image": "\xff"}', JSON, None),
        ("11 MiB body", b"\0" * (11 << 20), PNG, 413),
        ("bad base64", json.dumps({"images": ["%%%"]}).encode(), JSON, None),
        ("unknown option", json.dumps({"image": img, "stepz": 3}).encode(), JSON, None),
        ("mask garbage", json.dumps({"image": img, "mask": "%%%"}).encode(), JSON, None),
        ("box garbage", json.dumps({"image": img, "box": [0, 0, "a", 1]}).encode(), JSON, None),
        ("not an image", b"definitely not an image", PNG, None),
    ]
    out = [(f"{label} ({m})", m, body, h, want) for m in (ENC, TTT) for label, body, h, want in common]
    over = {"images": [_b64(k) for k in range(16)], "steps": 50, "copies": 64}
    out.append(("ttt over budget 16x50x64", TTT, json.dumps(over).encode(), JSON, None))
    out.append(("ttt steps '²'", TTT, json.dumps({"image": img, "steps": "²"}).encode(), JSON, None))
    return out


def _client(srv: server.Server, phase: str, until: float, hostile: float, seed: int, out: list[Rec]) -> None:
    """Requests until ``until``: hostile ones (drawn) with probability ``hostile``, else valid ones."""
    rng, session, i = random.Random(seed), requests.Session(), seed
    url, headers = f"{srv.inference_url}/predictions/", srv.headers("inference")
    while time.monotonic() < until:
        bad = rng.random() < hostile
        label, model, body, hdrs, want = rng.choice(HOSTILE) if bad else VALID[i % len(VALID)]
        i += 0 if bad else 1
        t0 = time.perf_counter()
        try:
            r = session.post(url + model, data=body, headers={**headers, **hdrs}, timeout=120)
            status, text = r.status_code, r.text[:160]
        except requests.RequestException as e:
            status, text = None, f"{type(e).__name__}: {e}"[:160]
            session.close()
            session = requests.Session()
        ms = (time.perf_counter() - t0) * 1000
        ok = status == want if want else status is not None and 400 <= status < 500
        out.append(Rec(phase, label, not bad, status, ms, ok, text))


def _workers(srv: server.Server) -> set[str]:
    """``model:pid`` of every worker, from the management API (none of a model it cannot describe)."""
    out, headers = set(), srv.headers("management")
    for m in (ENC, TTT):
        try:
            r = requests.get(f"{srv.management_url}/models/{m}", headers=headers, timeout=10)
            out |= {f"{m}:{int(w['pid'])}" for w in r.json()[0]["workers"]}
        except (requests.RequestException, ValueError, LookupError, TypeError) as e:
            print(f"could not list the workers of {m}: {e}", flush=True)
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")  # the process is gone


def _sample(srv: server.Server, t: float) -> dict[str, float]:
    assert srv.pid is not None
    return {"t": t, "frontend": _rss_mb(srv.pid), **{w: _rss_mb(int(w.split(":")[1])) for w in _workers(srv)}}


def _phase(
    srv: server.Server, name: str, seconds: float, args: argparse.Namespace, hostile: float
) -> tuple[list[Rec], float, list[dict[str, float]]]:
    """Run ``seconds`` of load from ``args.clients`` threads; RSS samples every ``args.sample_s``."""
    recs: list[Rec] = []
    t0 = time.monotonic()
    until = t0 + seconds
    threads = [
        threading.Thread(target=_client, args=(srv, name, until, hostile, 1000 * k + 1, recs))
        for k in range(args.clients)
    ]
    for th in threads:
        th.start()
    samples, due = [_sample(srv, 0.0)], t0 + args.sample_s
    while due < until - 1:  # the last sample comes once the clients are done
        time.sleep(max(0.0, due - time.monotonic()))
        samples.append(_sample(srv, time.monotonic() - t0))
        due += args.sample_s
    for th in threads:
        th.join()
    samples.append(_sample(srv, time.monotonic() - t0))
    return recs, time.monotonic() - t0, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=180, help="phase B (soak) length")
    ap.add_argument("--reference-s", type=float, default=30, help="phase A (valid only) length")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--hostile", type=float, default=0.3, help="share of hostile requests in phase B")
    ap.add_argument("--sample-s", type=float, default=15, help="RSS sampling period in phase B")
    args = ap.parse_args()
    pct = bench_serving._pct
    tmp = Path(tempfile.mkdtemp(prefix="tessera-soak-"))
    home = tmp / "home"
    t_start = time.monotonic()
    try:
        enc = checkpoint.save(
            checkpoint.make(ARCH, config_of(ARCH), build(ARCH).state_dict()), tmp / "enc.pt"
        )
        ttt = bench_serving._ttt_checkpoint(ARCH, 2, tmp / "ttt.pt")
        cfg = package.Config(batch_size=4, max_batch_delay_ms=5)
        store = home / "model-store"
        models = {n: package.package(c, n, 1, store, cfg).name for n, c in ((ENC, enc), (TTT, ttt))}
        srv = server.start(home, "local", server.Ports.free(), models=models, timeout=180)
        print(f"TorchServe up in {time.monotonic() - t_start:.0f} s (frontend pid {srv.pid})", flush=True)
        VALID[:], HOSTILE[:] = [_valid(i) for i in range(20)], _hostile()
        deadline = time.monotonic() + 180
        for _, m, body, hdrs, _ in VALID[:8]:  # warm-up, and wait for the workers (503 until they are up)
            while management.predict(srv, m, body, hdrs).status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
        pids0 = _workers(srv)
        ref, ref_wall, _ = _phase(srv, "A", args.reference_s, args, 0.0)
        soak, soak_wall, samples = _phase(srv, "B", args.seconds, args, args.hostile)
        pids1 = _workers(srv)
        alive = srv.ping()
    finally:
        server.stop(home)
        shutil.rmtree(tmp, ignore_errors=True)

    def p50_p99(recs: list[Rec], label: str = "") -> tuple[float, float]:
        ms = [r.ms for r in recs if r.valid and r.status == 200 and label in r.label]
        return (pct(ms, 0.5), pct(ms, 0.99)) if ms else (float("nan"), float("nan"))

    (_, ref_p99), (p50, p99) = p50_p99(ref), p50_p99(soak)
    print(f"\nphase A: {len(ref)} valid requests in {ref_wall:.1f} s ({len(ref) / ref_wall:.1f} req/s)")
    print(f"phase B: {len(soak)} requests in {soak_wall:.1f} s ({len(soak) / soak_wall:.1f} req/s)")
    for phase, recs in (("A", ref), ("B", soak)):
        for label in ("valid encoder", "valid ttt"):
            q = p50_p99(recs, label)
            print(f"  phase {phase}, {label}: p50 {q[0]:.1f} ms p99 {q[1]:.1f} ms")
    answers = Counter((r.label, r.status) for r in soak if not r.valid)
    print(f"hostile: {sum(answers.values())} requests in phase B; status per case:")
    for (label, status), n in sorted(answers.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"  {label}: {n}x {status}")
    print("\nRSS (MB) in phase B:")
    for s in samples:
        print(f"  t={s['t']:6.1f} s  " + "  ".join(f"{k} {v:.1f}" for k, v in s.items() if k != "t"))
    first, last = samples[0], samples[-1]
    front = last["frontend"] - first["frontend"]
    work = sum(v for k, v in last.items() if ":" in k) - sum(v for k, v in first.items() if ":" in k)
    seen = pids0 | pids1 | {k for s in samples for k in s if ":" in k}
    restarts = len(seen) - len(pids0)  # every worker PID that was not there at the start
    bad = [r for r in ref + soak if not r.ok]
    fivexx = sum(1 for r in ref + soak if r.status is not None and r.status >= 500)
    dropped = sum(1 for r in ref + soak if r.status is None)
    print(f"\nworker PIDs before {sorted(pids0)} after {sorted(pids1)}; healthy at the end: {alive}")
    print(f"violations: {len(bad)} (5xx {fivexx}, dropped {dropped})")
    first_text = {(r.phase, r.label, r.status): r.text for r in reversed(bad)}
    for (phase, label, status), n in sorted(
        Counter((r.phase, r.label, r.status) for r in bad).items(), key=str
    ):
        print(f"  phase {phase}, {label}: {n}x {status}: {first_text[phase, label, status]!r}")
    print(f"wall time {time.monotonic() - t_start:.0f} s\n")
    results: list[tuple[str, float, str]] = [
        ("serving_soak_valid_p50", p50, "ms"),
        ("serving_soak_valid_p99", p99, "ms"),
        ("serving_soak_reference_p99", ref_p99, "ms"),
        ("serving_soak_p99_ratio", p99 / ref_p99, "x"),
        ("serving_soak_rss_growth", front + work, "MB"),
        ("serving_soak_frontend_rss_growth", front, "MB"),
        ("serving_soak_worker_rss_growth", work, "MB"),
        ("serving_soak_requests", len(soak), "count"),
        ("serving_soak_violations", len(bad), "count"),
        ("serving_soak_worker_restarts", restarts, "count"),
    ]
    for name, value, unit in results:
        print(f"RESULT {name} {value:.0f} {unit}" if unit == "count" else f"RESULT {name} {value:.2f} {unit}")


if __name__ == "__main__":
    main()
