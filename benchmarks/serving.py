"""Serving under load, on loopback: the pipeline's Bento against its HTTP floor, a simple peer and its limit.

    python -m benchmarks.serving            (after `make run`: it serves artifacts/compress/model.onnx)

Compared in one run, each server alone on the machine while it is measured:
- bento: the service as `package` builds it (adaptive batching on, params.yaml's `package` knobs), around the
  pipeline's chosen model; its JSON /predict, and its binary /predict_npy (a .npy body in, a .npy of probabilities
  out); and the same with `workers: 2` (one server process per core here);
- bento, batching off: the same, built with `package.batching: false`;
- no-op floor: the same service around a model that does nothing (constant probabilities): HTTP + validation;
- FastAPI peer: one plain FastAPI endpoint (benchmarks/serving_peer.py) with the same model, under uvicorn;
- in-process: ONNX Runtime's forward in this process, no HTTP (the limit), sustained over the same seconds.
Closed loop at several concurrency levels (each client sends its next request when the last is answered), for
requests of 1 image and of 64 images; then an open loop at a fixed 200 requests/s for the latency target.
The client (aiohttp, one process) shares the machine's cores with the server, as it does for every system.
Every server is measured `--rounds` times (3), the servers in turn, and each figure is the median of its rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVELS = {1: (1, 8, 32), 64: (1, 8, 16)}  # images per request → concurrency levels
OPEN_LOOP_RATE = 200  # requests/s, single images
JSON, NPY = "application/json", "application/x-npy"


async def _closed_loop(url: str, body: bytes, concurrency: int, seconds: float, kind: str = JSON) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client(deadline: float, keep: bool) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"content-type": kind}) as answer:
                        await answer.read()
                        ok = answer.status == 200
                except aiohttp.ClientError:
                    ok = False
                if keep:
                    latencies.append(time.perf_counter() - began)
                    errors += not ok

        await asyncio.gather(*(client(time.perf_counter() + 0.5, False) for _ in range(concurrency)))  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return _summary(latencies, errors, elapsed)


async def _open_loop(url: str, body: bytes, rate: float, seconds: float, kind: str = JSON) -> dict:
    """`rate` requests per second on a fixed schedule, whatever the answers: latency measured from the scheduled time."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            try:
                async with session.post(url, data=body, headers={"content-type": kind}) as answer:
                    await answer.read()
                    errors += answer.status != 200
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - at)

        started = time.perf_counter() + 0.1
        await asyncio.gather(*(one(started + i / rate) for i in range(int(rate * seconds))))
        elapsed = time.perf_counter() - started
    return _summary(latencies, errors, elapsed)


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict:
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "errors": int(errors), "requests_per_s": len(ms) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def _bodies(images: np.ndarray, kind: str = JSON) -> dict[int, bytes]:
    import io

    def npy(array: np.ndarray) -> bytes:
        out = io.BytesIO()
        np.save(out, array)
        return out.getvalue()

    return {n: json.dumps({"images": images[:n].tolist()}).encode() if kind == JSON else npy(images[:n]) for n in LEVELS}


def _measure(url: str, bodies: dict[int, bytes], seconds: float, open_loop: bool, kind: str = JSON) -> dict:
    results = {}
    for n, levels in LEVELS.items():
        for concurrency in levels:
            results[f"{n}x{concurrency}"] = asyncio.run(_closed_loop(url, bodies[n], concurrency, seconds, kind))
            print(f"  {n:>2} image(s), {concurrency:>2} concurrent: {results[f'{n}x{concurrency}']}", flush=True)
    if open_loop:  # after 2 s at the same rate: the steady state at that load, not the wake of the bursts above
        asyncio.run(_open_loop(url, bodies[1], OPEN_LOOP_RATE, 2.0, kind))
        results["open"] = asyncio.run(_open_loop(url, bodies[1], OPEN_LOOP_RATE, seconds, kind))
        print(f"  open loop {OPEN_LOOP_RATE}/s: {results['open']}", flush=True)
    return results


def _median_over(rounds: list[dict[str, dict]]) -> dict[str, dict]:
    """Each point's median over the rounds (throughput and latencies each on their own), with every round's errors."""
    merged: dict[str, dict] = {}
    for name, points in rounds[0].items():
        merged[name] = {}
        for key in points:
            runs = [r[name][key] for r in rounds]
            merged[name][key] = {
                "requests": int(sum(run["requests"] for run in runs)), "errors": int(sum(run["errors"] for run in runs)),
                **{f: float(np.median([run[f] for run in runs])) for f in ("requests_per_s", "p50_ms", "p99_ms")},
                "rounds": [run["requests_per_s"] if key != "open" else run["p99_ms"] for run in runs]}
    return merged


def _in_process(predict, images: np.ndarray, seconds: float) -> dict[str, dict[int, float]]:
    """The forward alone, images/s at each request size. `sustained`: calls back to back for `seconds`, the same
    measure as a server's closed loop with one client (what the goals compare against); `peak`: the best of 5
    short blocks' medians, the forward's speed in this machine's fastest moments."""
    sustained, peak = {}, {}
    for n in LEVELS:
        batch = images[:n]
        predict(batch)
        medians = []
        for _ in range(5):
            runs = []
            for _ in range(200 if n == 1 else 50):
                began = time.perf_counter()
                predict(batch)
                runs.append(time.perf_counter() - began)
            medians.append(float(np.median(runs)))
        peak[n] = n / min(medians)
        calls, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            predict(batch)
            calls += 1
        sustained[n] = n * calls / (time.perf_counter() - began)
    return {"sustained": sustained, "peak": peak}


def _build_bentos(model: Path, choice: dict, home: Path, only_served: bool = False) -> dict[str, str]:
    """The served Bento, the same with batching off, and the same service around a no-op model.

    In this process, which has not imported BentoML before: BentoML reads BENTOML_HOME once, at import.
    """
    import torch

    os.environ["BENTOML_HOME"] = str(home)
    from tasks.common.config import load_params
    from tasks.compress.variants import export_onnx
    from tasks.package import build_bento

    n_classes = len(choice["classes"])

    class NoOp(torch.nn.Module):
        def forward(self, images):
            return torch.zeros(images.shape[0], n_classes) + 1.0 / n_classes

    cfg = load_params(ROOT / "params.yaml").package
    meta = {k: v for k, v in choice.items() if k != "reason"}
    labels = {"variant": meta["variant"], "model_version": "bench"}
    if only_served:
        return {"bento": build_bento(model, meta, labels, cfg, ROOT / "bento").bento_tag}
    noop = home / "noop.onnx"
    export_onnx(NoOp(), np.zeros((1, *meta["served_shape"]), np.float32), noop)
    return {
        "bento": build_bento(model, meta, labels, cfg, ROOT / "bento").bento_tag,
        "bento, 2 workers": build_bento(model, meta, labels, cfg.model_copy(update={"workers": 2}), ROOT / "bento").bento_tag,
        "batching off": build_bento(model, meta, labels, cfg.model_copy(update={"batching": False}), ROOT / "bento").bento_tag,
        "no-op floor": build_bento(noop, {**meta, "variant": "no-op"}, labels, cfg, ROOT / "bento").bento_tag,
    }


async def _goodput(url: str, body: bytes, images: int, clients: int, seconds: float) -> dict:
    """Closed loop of `clients`, each honouring Retry-After on a 503 (as a well-behaved client does): images answered
    per second (goodput), and how many requests were turned away at arrival."""
    import aiohttp

    answered = refused = errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def client(deadline: float) -> None:
            nonlocal answered, refused, errors
            while time.perf_counter() < deadline:
                try:
                    async with session.post(url, data=body, headers={"content-type": JSON},
                                            timeout=aiohttp.ClientTimeout(total=60)) as answer:
                        await answer.read()
                        if answer.status == 200:
                            answered += 1
                        elif answer.status == 503:
                            refused += 1
                            await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))
                        else:
                            errors += 1
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"clients": clients, "images_per_s": answered * images / elapsed, "answered": answered,
            "refused_503": refused, "errors": errors}


def _heavy_clients(url: str, heavy: bytes, clients: int, stop, statuses) -> None:
    """In a process of its own (so that its work does not delay the measuring client's loop): `clients` sending
    `heavy` back to back until `stop` is set; the answers' statuses counted into `statuses`."""
    import aiohttp

    async def run() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def client() -> None:
                while not stop.is_set():
                    try:
                        async with session.post(url, data=heavy, headers={"content-type": JSON}) as answer:
                            await answer.read()
                            statuses[answer.status] = statuses.get(answer.status, 0) + 1
                    except aiohttp.ClientError:
                        statuses[0] = statuses.get(0, 0) + 1

            await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(run())


def _latency_beside(url: str, one: bytes, heavy: bytes, rate: float, seconds: float) -> dict:
    """Single-image requests at `rate`/s (open loop) while two clients, in another process, send `heavy` bodies."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        stop, statuses = manager.Event(), manager.dict()
        heavies = context.Process(target=_heavy_clients, args=(url, heavy, 2, stop, statuses))
        heavies.start()
        time.sleep(2.0)
        measured = asyncio.run(_open_loop(url, one, rate, seconds))
        stop.set()
        heavies.join(timeout=60)
        answered = dict(statuses)
    return {**measured, "heavy_bytes": len(heavy), "heavy_statuses": {str(k): v for k, v in answered.items()}}


def overload(seconds: float) -> None:
    """Issue 19's overload figures on the pipeline's Bento: goodput of 1024-image requests at 4 and 64 clients, and
    single-image latency at 50 requests/s beside two clients sending 8 MB bodies (and the largest valid ones)."""
    from benchmarks.record import save, table
    from bento.front import own_metrics
    from tests.support.processes import free_port, stop, wait_until_healthy

    model, choice = ROOT / "artifacts/compress/model.onnx", ROOT / "artifacts/compress/choice.json"
    if not model.is_file():
        raise SystemExit(f"{model} not found: run the pipeline first (make run)")
    choice = json.loads(choice.read_text())
    test = (np.load(ROOT / "data/prepared/test/x.npy") * choice["pixel_max"]).astype(np.float32)
    test = np.moveaxis(test, 1, -1) if test.shape[1] > 1 else test[:, 0]  # N×C×H×W → N×H×W[×C], as served
    batch = np.resize(test, (1024, *test.shape[1:]))
    big = json.dumps({"images": batch.tolist()}).encode()
    one = json.dumps({"images": test[:1].tolist()}).encode()
    per_image = len(json.dumps(test[:1].tolist()))
    eight_mb = json.dumps({"images": np.resize(test, (8_000_000 // per_image, *test.shape[1:])).tolist()}).encode()
    home = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.pop("BENTO_API_KEY", None)
    try:
        tag = _build_bentos(model, choice, home, only_served=True)["bento"]
        port = free_port()
        process = subprocess.Popen(own_metrics.command(tag, "127.0.0.1", port), cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/predict"
        try:
            wait_until_healthy(process, f"http://127.0.0.1:{port}/readyz", tag)
            goodput = {}
            for clients in (4, 64):
                goodput[clients] = asyncio.run(_goodput(url, big, len(batch), clients, seconds))
                print(f"  1024-image requests, {clients} clients: {goodput[clients]}", flush=True)
            alone = asyncio.run(_open_loop(url, one, 50, seconds))
            beside = {name: _latency_beside(url, one, body, 50, seconds)
                      for name, body in (("8 MB", eight_mb), ("largest valid", big))}
            print(f"  single images at 50/s alone: {alone}; beside heavy bodies: {beside}", flush=True)
        finally:
            stop(process)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    kept = goodput[64]["images_per_s"] / goodput[4]["images_per_s"]
    goals = [["goodput at 64 clients of 1024-image requests ≥ 80 % of that at 4",
              f"{kept:.0%} ({goodput[64]['images_per_s']:.0f} vs {goodput[4]['images_per_s']:.0f} images/s)", kept >= 0.8],
             ["single-image p99 at 50 req/s ≤ 20 ms while two clients send 8 MB bodies",
              f"{beside['8 MB']['p99_ms']:.1f} ms (alone: {alone['p99_ms']:.1f} ms)", beside["8 MB"]["p99_ms"] <= 20]]
    markdown = "\n\n".join([
        f"Model: `{choice['variant']}`, the Bento as `package` builds it (params.yaml's `package` knobs: "
        "max_concurrent_requests, max_inflight_mb, the /predict JSON limit from max_images_per_request). One aiohttp "
        "client process "
        f"shares the machine's cores with the server; {seconds:g} s per measurement. Clients that get 503 wait the "
        "Retry-After it carries, as a well-behaved client does. The heavy-body clients run in a second process.",
        table(["1024-image JSON requests", "images/s answered", "answered", "503 at arrival", "other errors"],
              [[f"{g['clients']} clients", g["images_per_s"], g["answered"], g["refused_503"], g["errors"]]
               for g in goodput.values()]),
        table(["single images at 50 req/s", "p50 ms", "p99 ms", "errors", "heavy bodies: bytes", "their answers"],
              [["alone", alone["p50_ms"], alone["p99_ms"], alone["errors"], "", ""]]
              + [[f"beside two clients sending {name} bodies", r["p50_ms"], r["p99_ms"], r["errors"], r["heavy_bytes"],
                  ", ".join(f"{k}: {v}" for k, v in r["heavy_statuses"].items())] for name, r in beside.items()]),
        table(["goal (issue 19)", "measured", "met"], [[g, m, "yes" if ok else "**no**"] for g, m, ok in goals]),
    ])
    save("serving_overload", title="Serving under overload (loopback)", command="python -m benchmarks.serving --overload",
         markdown=markdown, figures={"goodput": {str(k): v for k, v in goodput.items()}, "alone": alone,
                                     "beside": beside, "goals": {g: ok for g, _, ok in goals}})
    print(markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="times every server is measured, in turn (default 3)")
    parser.add_argument("--overload", action="store_true", help="only the overload figures (admission, large bodies)")
    args = parser.parse_args()
    if args.overload:
        return overload(max(args.seconds, 8.0))
    from benchmarks.record import save, table
    from tasks.nn.latency import onnx_predictor
    from tests.support.processes import free_port, stop, wait_until_healthy  # the server helpers the tests use

    model, choice = ROOT / "artifacts/compress/model.onnx", ROOT / "artifacts/compress/choice.json"
    if not model.is_file():
        raise SystemExit(f"{model} not found: run the pipeline first (make run)")
    choice = json.loads(choice.read_text())
    images = (np.load(ROOT / "data/prepared/test/x.npy")[:64, 0] * choice["pixel_max"]).astype(np.float32)
    bodies, npy_bodies = _bodies(images), _bodies(images, NPY)
    home = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "SERVING_PEER_MODEL": str(model)}
    env.pop("BENTO_API_KEY", None)
    rounds: list[dict[str, dict]] = []
    limits: list[dict[int, float]] = []  # the in-process forward, once a round
    predict = onnx_predictor(model)
    try:
        tags = _build_bentos(model, choice, home)
        servers = {name: [sys.executable, "-m", "bentoml", "serve", tag, "--host", "127.0.0.1"] for name, tag in tags.items()}
        servers["FastAPI peer"] = [sys.executable, "-m", "uvicorn", "benchmarks.serving_peer:app", "--host", "127.0.0.1",
                                   "--log-level", "warning", "--no-access-log"]
        for round_ in range(args.rounds):  # the servers in turn, every round: a slow spell of the machine hits one round
            measured: dict[str, dict] = {}
            for name, command in servers.items():
                port = free_port()
                process = subprocess.Popen([*command, "--port", str(port)], cwd=ROOT, env=env,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                try:
                    wait_until_healthy(process, f"http://127.0.0.1:{port}/" + ("docs" if name == "FastAPI peer" else "readyz"), name)
                    print(f"round {round_ + 1}/{args.rounds}: {name}", flush=True)
                    measured[name] = _measure(f"http://127.0.0.1:{port}/predict", bodies, args.seconds, open_loop=True)
                    if name.startswith("bento"):  # the same server's binary endpoint: a .npy body in, a .npy of probabilities out
                        print(f"round {round_ + 1}/{args.rounds}: {name} /predict_npy", flush=True)
                        measured[f"{name} /predict_npy"] = _measure(f"http://127.0.0.1:{port}/predict_npy",
                                                                    npy_bodies, args.seconds, open_loop=True, kind=NPY)
                finally:
                    stop(process)
            rounds.append(measured)
            limits.append(_in_process(predict, images, args.seconds))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results = _median_over(rounds)

    in_process = {n: float(np.median([r["sustained"][n] for r in limits])) for n in LEVELS}
    peak = {n: float(np.median([r["peak"][n] for r in limits])) for n in LEVELS}
    figures = {"results": results, "in_process_images_per_s": {str(k): v for k, v in in_process.items()},
               "in_process_peak_images_per_s": {str(k): v for k, v in peak.items()}}

    best_key = lambda name, n: max((k for k in results[name] if k.startswith(f"{n}x")),  # noqa: E731
                                   key=lambda k: results[name][k]["requests_per_s"])
    best = lambda name, n: results[name][best_key(name, n)]["requests_per_s"]  # noqa: E731
    each = lambda name, n, times=1: "/".join(f"{v * times:.0f}" for v in results[name][best_key(name, n)]["rounds"])  # noqa: E731
    single = {name: best(name, 1) for name in results}
    images64 = {name: best(name, 64) * 64 for name in results}
    bulk = max((n for n in images64 if n.startswith("bento")), key=images64.get)  # the best way to send 64 at a time
    opened = results["bento"]["open"]
    goals = [
        ["single-image throughput ≥ 80 % of the no-op floor",
         f"{single['bento'] / single['no-op floor']:.0%} (rounds: {each('bento', 1)} vs {each('no-op floor', 1)} req/s)",
         single["bento"] >= 0.8 * single["no-op floor"]],
        ["single-image throughput ahead of the FastAPI peer",
         f"{single['bento']:.0f} vs {single['FastAPI peer']:.0f} req/s (rounds: {each('bento', 1)} vs "
         f"{each('FastAPI peer', 1)})", single["bento"] > single["FastAPI peer"]],
        ["64-image requests: images/s ≥ 50 % of in-process at batch 64",
         f"{images64[bulk]:.0f} vs {in_process[64]:.0f} images/s ({images64[bulk] / in_process[64]:.0%}, {bulk}; "
         f"rounds: {each(bulk, 64, 64)}; JSON /predict: {images64['bento'] / in_process[64]:.0%})",
         images64[bulk] >= 0.5 * in_process[64]],
        [f"p99 ≤ 20 ms at {OPEN_LOOP_RATE} requests/s", f"{opened['p99_ms']:.1f} ms (p50 {opened['p50_ms']:.1f}; rounds: "
         + "/".join(f"{v:.1f}" for v in opened["rounds"]) + ")", opened["p99_ms"] <= 20],
        ["no errors", f"{sum(r['errors'] for s in results.values() for r in s.values())} errors",
         all(r["errors"] == 0 for s in results.values() for r in s.values())],
    ]
    figures["goals"] = {goal: met for goal, _, met in goals}
    rows = [[name, key.split("x")[0], key.split("x")[1], r["requests_per_s"], r["requests_per_s"] * int(key.split("x")[0]),
             r["p50_ms"], r["p99_ms"], r["errors"]]
            for name, runs in results.items() for key, r in runs.items() if key != "open"]
    markdown = "\n\n".join([
        f"Model: `{choice['variant']}` (the pipeline's chosen variant), {args.seconds:g} s per measurement after a 0.5 s "
        "warm-up; client and server share the machine's cores. Closed loop: each client sends its next request when "
        f"the last is answered. Every server was measured {args.rounds} times, the servers in turn; each figure is its "
        "median over those rounds (errors: their sum), so a slow spell of this shared machine does not fall on one "
        "server alone.",
        table(["server", "images/request", "concurrency", "requests/s", "images/s", "p50 ms", "p99 ms", "errors"], rows),
        f"In-process forward (ONNX Runtime, no HTTP), sustained: calls back to back for {args.seconds:g} s in each "
        f"round, as a server's closed loop with one client, median of the rounds: {in_process[1]:.0f} images/s at "
        f"batch 1, {in_process[64]:.0f} images/s at batch 64 (rounds: " + "/".join(f"{r['sustained'][64]:.0f}" for r in limits)
        + "). Its peak (the best of 5 short blocks' medians, this machine's fastest moments): "
        f"{peak[1]:.0f} and {peak[64]:.0f} images/s (rounds at batch 64: " + "/".join(f"{r['peak'][64]:.0f}" for r in limits)
        + ").",
        f"Open loop: single images at a fixed {OPEN_LOOP_RATE} requests/s for {args.seconds:g} s after 2 s at that rate, "
        "latency from the scheduled send time (so a late client counts against the server too):",
        table(["server", "p50 ms", "p99 ms", "errors"],
              [[name, runs["open"]["p50_ms"], runs["open"]["p99_ms"], runs["open"]["errors"]] for name, runs in results.items()]),
        table(["goal (issue 7)", "measured", "met"], [[g, m, "yes" if ok else "**no**"] for g, m, ok in goals]),
    ])
    save("serving", title="Serving under load (loopback)", command="python -m benchmarks.serving",
         markdown=markdown, figures=figures)
    print(markdown)


if __name__ == "__main__":
    main()
