"""Serving benchmark: the encoder through TorchServe vs in-process, and the TTT endpoint batched vs not.

A bounded client on 127.0.0.1 (a fixed number of requests, a fixed number of concurrent keep-alive
connections, driven by one thread so that the client takes little of the CPU the server shares;
every answer must be a 200):

* encoder, batch 1: one sender, single-image requests to a batchSize-1 deployment (and, for
  comparison, to the batch-8 one) -> p50/p99 latency and requests/s, against the
  same model called in-process on one image (overhead in ms; the faster in-process p50 of two);
* encoder, batch 8: 8 concurrent senders of single-image requests, batched by TorchServe, against
  one in-process batch of 8 (ratio; target >= 0.85x). Two deployments of the same archive: the
  default one (1 worker with a thread per core, batchSize 8, maxBatchDelay 5 ms) and a CPU-tuned one
  (2 workers with one thread each, batchSize 4, maxBatchDelay 0: the 8 requests in flight become two
  batches of 4, so one worker computes while the other's answers travel). ``--rounds`` rounds run
  both deployments between two in-process measurements; a round's ratio is against the faster of
  the in-process batches right before and right after it, and the figure is the median round
  (this machine's speed drifts by up to a third over seconds), with a distribution-free interval
  for that median and a verdict against the target: met (the whole interval at or above 0.85x),
  not met (below), or undecided (the interval holds 0.85x). Also printed: the median round
  against the fastest in-process batch of the whole run (the stricter figure). For context, not
  the target: two 1-thread processes running batches of 4 side by side, in-process;
* TTT classifier at steps 0/5/20: 8 concurrent single-image requests with TorchServe batching (one
  vectorised adaptation per batch) vs batchSize 1 (each request adapted alone).

    .venv/bin/python bench/serving.py [--arch mae_vit_tiny_patch4] [--requests 400] [--warmup 2000]
        [--rounds 11] [--ttt-requests 16] [--ttt-arch mae_vit_micro_patch4] [--ttt-copies 8]
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import selectors
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this file is bench/serving.py: drop its folder from the path so `serving` is the package, not this file
sys.path[:] = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from serving import management, package, server  # noqa: E402
from tessera import checkpoint  # noqa: E402
from tessera.adapt.stats import median_ci  # noqa: E402  (also read by tests/test_bench_serving_stats.py)
from tessera.models import build  # noqa: E402
from tessera.models.embed import embed  # noqa: E402
from tessera.models.registry import config_of, from_checkpoint  # noqa: E402

TARGET_B8 = 0.85  # the target: TorchServe >= 0.85x of one in-process batch of 8


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def verdict(low: float, high: float, target: float = TARGET_B8) -> str:
    """'met' when the whole interval is at or above ``target``, 'not met' when below, else 'undecided'."""
    if low >= target:
        return "met"
    if high < target:
        return "not met"
    return "undecided"


class _Conn:
    """One keep-alive HTTP/1.1 connection of the client: the request in flight and its answer so far."""

    def __init__(self, host: str, port: int) -> None:
        self.addr = (host, port)
        self.sock = self._connect()
        self.buf = bytearray()
        self.t = 0.0

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=600)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def reconnect(self) -> None:
        self.sock.close()
        self.sock = self._connect()
        self.buf.clear()

    def answer(self) -> tuple[int, bytes, bool] | None:
        """(status, body, server closes) once the whole answer is in, else None."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        if "content-length" not in fields:
            raise RuntimeError(f"answer without Content-Length: {lines}")
        size = end + 4 + int(fields["content-length"])
        if len(self.buf) < size:
            return None
        body = bytes(self.buf[end + 4 : size])
        del self.buf[:size]
        return int(lines[0].split(" ", 2)[1]), body, fields.get("connection", "").lower() == "close"


def _send(
    srv: server.Server, name: str, n: int, workers: int, body: bytes, headers: dict[str, str], warmup: int = 2
) -> dict:
    """``n`` POSTs over ``workers`` concurrent keep-alive connections; every answer must be a 200.

    One thread drives all connections (``selectors``): each sends its next request as soon as its
    answer is in, so ``workers`` requests are always in flight. The bytes on the wire are those of
    ``http.client`` (same request line, headers and body); one thread instead of ``workers`` Python
    threads keeps the client's own CPU use (it shares the cores with the server) small.
    """
    host, port = "127.0.0.1", srv.ports.inference
    hdrs = {
        "Host": f"{host}:{port}",
        "Accept-Encoding": "identity",
        "Content-Length": str(len(body)),
        **srv.headers("inference"),
        **headers,
    }
    head = f"POST /predictions/{name} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    request = (head + "\r\n").encode("latin-1") + body

    def run(count: int) -> tuple[list[float], float]:
        sel = selectors.DefaultSelector()
        conns = [_Conn(host, port) for _ in range(min(workers, count))]
        lat: list[float] = []
        sent = 0

        def start(c: _Conn) -> None:
            nonlocal sent
            sent += 1
            c.t = time.perf_counter()
            c.sock.sendall(request)

        t0 = time.perf_counter()
        for c in conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
            start(c)
        try:
            while len(lat) < count:
                ready = sel.select(timeout=600)
                if not ready:
                    raise TimeoutError(f"no answer from {name} within 600 s")
                for key, _ in ready:
                    c = key.data
                    chunk = c.sock.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError(f"{name}: the server closed a connection mid-answer")
                    c.buf += chunk
                    done = c.answer()
                    if done is None:
                        continue
                    status, data, closes = done
                    assert status == 200, data[:300]
                    lat.append((time.perf_counter() - c.t) * 1000)
                    if closes:  # the server said Connection: close: reconnect for the next request
                        sel.unregister(c.sock)
                        c.reconnect()
                        sel.register(c.sock, selectors.EVENT_READ, c)
                    if sent < count:
                        start(c)
            return lat, time.perf_counter() - t0
        finally:
            sel.close()
            for c in conns:
                c.sock.close()

    run(workers * warmup)  # warm-up rounds at the same concurrency
    lat, wall = run(n)
    return {"rps": n / wall, "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99)}


def _in_process(model: torch.nn.Module, batch: int, n: int) -> dict:
    x = torch.rand(batch, 3, 32, 32)
    with torch.inference_mode():
        for _ in range(5):
            embed(model, x)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            embed(model, x)
            lat.append((time.perf_counter() - t) * 1000)
    return {"rps": 1000 / statistics.mean(lat), "p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99)}


def _side_by_side_worker(path: str, batch: int, n: int, start, out) -> None:  # noqa: ANN001
    """One 1-thread process: ``n`` in-process batches of ``batch`` once all processes are ready."""
    torch.set_num_threads(1)
    model = from_checkpoint(checkpoint.load(path, map_location="cpu")).eval()
    _in_process(model, batch, 1)  # warm-up
    start.wait()
    out.put(_in_process(model, batch, n)["rps"] * batch)


def _side_by_side(path: Path, procs: int, batch: int, n: int) -> float:
    """Images/s of ``procs`` 1-thread processes each running ``n`` batches of ``batch`` at once."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(procs), ctx.Queue()
    args = (str(path), batch, n, start, out)
    ps = [ctx.Process(target=_side_by_side_worker, args=args) for _ in range(procs)]
    for p in ps:
        p.start()
    rates = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    return sum(rates)


def _ttt_checkpoint(arch: str, copies: int, path: Path) -> Path:
    import tessera.adapt  # noqa: F401

    cfg = config_of(
        "ttt_mae_classifier",
        backbone_arch=arch,
        backbone_config=config_of(arch),
        num_classes=10,
        rotation_head=False,
    )
    model = build("ttt_mae_classifier", **cfg)
    ttt = {"steps": 5, "copies": copies, "lr": 5e-3, "mask_ratio": 0.75}
    ckpt = checkpoint.make(
        "ttt_mae_classifier", cfg, model.state_dict(), classes=[str(i) for i in range(10)], extra={"ttt": ttt}
    )
    return checkpoint.save(ckpt, path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="mae_vit_tiny_patch4")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=2000, help="batch-8 warm-up requests per deployment")
    ap.add_argument(
        "--rounds",
        type=int,
        default=11,
        help="batch-8 rounds (in-process and both deployments); 11 give a 98.8%% interval",
    )
    ap.add_argument("--ttt-requests", type=int, default=16)
    ap.add_argument("--ttt-arch", default="mae_vit_micro_patch4", help="backbone of the TTT classifier")
    ap.add_argument("--ttt-copies", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-serving-"))
    model = build(args.arch).eval()
    enc = checkpoint.save(
        checkpoint.make(args.arch, config_of(args.arch), model.state_dict()), tmp / "enc.pt"
    )
    ttt = _ttt_checkpoint(args.ttt_arch, args.ttt_copies, tmp / "ttt.pt")
    store = tmp / "home" / "model-store"
    batched = package.Config(batch_size=8, max_batch_delay_ms=5, ttt_max_steps=20)
    single = package.Config(batch_size=1, max_batch_delay_ms=0, ttt_max_steps=20)
    # 2 workers x 1 thread (torch_threads 0: the cores divided by the workers), batches of 4
    tuned = package.Config(batch_size=4, max_batch_delay_ms=0, min_workers=2, max_workers=2)
    models = {
        "enc": package.package(enc, "enc", 1, store, batched).name,
        "enc2w": package.package(enc, "enc2w", 1, store, tuned).name,
        "enc1": package.package(enc, "enc1", 1, store, single).name,
        "ttt8": package.package(ttt, "ttt8", 1, store, batched).name,
        "ttt1": package.package(ttt, "ttt1", 1, store, single).name,
    }
    # The speed of this shared machine drifts by up to a third over seconds: a slow spell during one
    # in-process measurement must not make TorchServe look better. So batch 1 is measured before the
    # server starts and after the TorchServe batch-1 runs (the faster p50 is taken), and batch 8
    # before the server starts and between the batch-8 rounds (each round against the faster of its
    # two neighbours; the fastest of all for the stricter figure).
    n8 = max(10, args.requests // 8)
    ip1s = [_in_process(model, 1, args.requests)]
    ip8s = [_in_process(model, 8, n8)]
    srv = server.start(tmp / "home", "local", server.Ports.free(), models=models, timeout=180)
    try:
        body, headers = management.probe_request("encoder")
        # batch 1: a latency deployment (batchSize 1, no batching delay), one request at a time;
        # the batch-8 deployment below waits up to maxBatchDelay for company on every request.
        ts1 = _send(srv, "enc1", args.requests, 1, body, headers)
        ts1_on8 = _send(srv, "enc", args.requests, 1, body, headers)
        ip1s.append(_in_process(model, 1, args.requests))
        ip1 = min(ip1s, key=lambda r: r["p50"])
        overhead = ts1["p50"] - ip1["p50"]
        print(
            f"encoder batch 1: TorchServe {ts1['rps']:.1f} req/s p50 {ts1['p50']:.2f} ms"
            f" p99 {ts1['p99']:.2f} ms"
            f" | in-process {ip1['rps']:.1f}/s p50 {ip1['p50']:.2f} ms -> overhead {overhead:.2f} ms"
        )
        print(
            f"encoder batch 1 on the batch-8 deployment (maxBatchDelay 5 ms): p50 {ts1_on8['p50']:.2f} ms"
            f" -> overhead {ts1_on8['p50'] - ip1['p50']:.2f} ms"
        )
        deployments = {
            "enc": "1 worker (a thread per core), batchSize 8",
            "enc2w": "2 workers x 1 thread, batchSize 4",
        }
        for name in deployments:  # warm-up at the measured load (the JVM's JIT and the workers settle)
            _send(srv, name, args.warmup, 8, body, headers)
        runs: dict[str, list[dict]] = {name: [] for name in deployments}
        bracket = [_in_process(model, 8, n8)]  # in-process before round 1, then after every round
        for r in range(args.rounds):
            for name in deployments:
                runs[name].append(_send(srv, name, args.requests, 8, body, headers, warmup=1))
            bracket.append(_in_process(model, 8, n8))
            print(
                f"round {r + 1}: in-process {bracket[-2]['rps'] * 8:.1f} / {bracket[-1]['rps'] * 8:.1f} img/s"
                " (before / after) | "
                + " | ".join(f"{name} {runs[name][-1]['rps']:.1f} img/s" for name in deployments)
            )
        ip8s += bracket
        ip8 = max(ip8s, key=lambda r: r["rps"])
        spread = 1 - min(r["rps"] for r in ip8s) / ip8["rps"]
        figures: dict[str, dict] = {}
        for name, label in deployments.items():
            # each round against the faster of the in-process batches right before and right after it
            ratios = sorted(
                run["rps"] / (8 * max(bracket[r]["rps"], bracket[r + 1]["rps"]))
                for r, run in enumerate(runs[name])
            )
            paired = ratios[len(ratios) // 2]
            low, high, cover = median_ci(ratios)
            med = sorted(runs[name], key=lambda r: r["rps"])[len(runs[name]) // 2]
            fastest = med["rps"] / (ip8["rps"] * 8)
            figures[name] = {"med": med, "paired": paired, "fastest": fastest, "low": low, "high": high}
            print(
                f"encoder batch 8, {label}: TorchServe {med['rps']:.1f} img/s"
                f" (median of {args.rounds} rounds)"
                f" p50 {med['p50']:.2f} ms p99 {med['p99']:.2f} ms -> {paired:.2f}x in-process"
                f" (median round against its own bracket; rounds {' '.join(f'{x:.2f}' for x in ratios)};"
                f" {cover:.1%} interval of the median {low:.2f}-{high:.2f}: target {TARGET_B8}x"
                f" {verdict(low, high)});"
                f" {fastest:.2f}x of the fastest of all {len(ip8s)} in-process batches of 8"
                f" ({ip8['rps'] * 8:.1f} img/s)"
            )
        if spread > 0.15:
            print(f"note: the in-process figures differ by up to {spread:.0%}: the machine was not quiet")
        side = _side_by_side(enc, 2, 4, max(20, args.requests // 4))
        print(
            f"context: two 1-thread processes running batches of 4 side by side in-process: {side:.1f} img/s"
            f" ({side / (ip8['rps'] * 8):.2f}x the in-process batch of 8); the tuned deployment reaches"
            f" {figures['enc2w']['med']['rps'] / side:.2f}x of that"
        )
        print(f"RESULT serving_encoder_b1_on_b8_deployment_overhead_p50 {ts1_on8['p50'] - ip1['p50']:.2f} ms")
        print(f"RESULT serving_encoder_b1_overhead_p50 {overhead:.2f} ms")
        print(f"RESULT serving_encoder_b1_rps {ts1['rps']:.1f} req/s")
        print(f"RESULT serving_encoder_b1_p99 {ts1['p99']:.2f} ms")
        print(f"RESULT serving_encoder_b8_vs_inprocess {figures['enc2w']['paired']:.2f} x")
        print(f"RESULT serving_encoder_b8_vs_inprocess_ci_low {figures['enc2w']['low']:.2f} x")
        print(f"RESULT serving_encoder_b8_vs_inprocess_ci_high {figures['enc2w']['high']:.2f} x")
        print(f"RESULT serving_encoder_b8_vs_fastest_inprocess {figures['enc2w']['fastest']:.2f} x")
        print(f"RESULT serving_encoder_b8_rps {figures['enc2w']['med']['rps']:.1f} img/s")
        print(f"RESULT serving_encoder_b8_p99 {figures['enc2w']['med']['p99']:.2f} ms")
        print(f"RESULT serving_encoder_b8_1worker_vs_inprocess {figures['enc']['paired']:.2f} x")
        print(f"RESULT serving_encoder_b8_1worker_vs_fastest_inprocess {figures['enc']['fastest']:.2f} x")
        print(f"RESULT serving_encoder_b8_1worker_rps {figures['enc']['med']['rps']:.1f} img/s")
        print(f"RESULT serving_encoder_b8_1worker_p99 {figures['enc']['med']['p99']:.2f} ms")
        print(f"RESULT serving_encoder_b8_inprocess {ip8['rps'] * 8:.1f} img/s")
        print(f"RESULT serving_encoder_b8_inprocess_2x1thread_b4 {side:.1f} img/s")
        img = base64.b64encode(body).decode("ascii")
        for steps in (0, 5, 20) if args.ttt_requests > 0 else ():
            req = json.dumps({"image": img, "steps": steps}).encode()
            hdr = {"Content-Type": "application/json"}
            b8 = _send(srv, "ttt8", args.ttt_requests, 8, req, hdr, warmup=1)
            b1 = _send(srv, "ttt1", args.ttt_requests, 8, req, hdr, warmup=1)
            print(
                f"TTT steps {steps:2d}: batched {b8['rps']:.2f} req/s p50 {b8['p50']:.0f} ms"
                f" p99 {b8['p99']:.0f} ms"
                f" | per-request {b1['rps']:.2f} req/s p50 {b1['p50']:.0f} ms -> {b8['rps'] / b1['rps']:.2f}x"
            )
            print(f"RESULT serving_ttt_steps{steps}_batched_rps {b8['rps']:.2f} req/s")
            print(f"RESULT serving_ttt_steps{steps}_per_request_rps {b1['rps']:.2f} req/s")
            print(f"RESULT serving_ttt_steps{steps}_batched_vs_per_request {b8['rps'] / b1['rps']:.2f} x")
    finally:
        server.stop(tmp / "home")
        shutil.rmtree(tmp, ignore_errors=True)  # archives and logs: about 38 MB per run


if __name__ == "__main__":
    main()
