"""Text: the pipeline on a generated helpdesk set of support tickets (tests/support/own_data.py `tickets`: a message
per row, three queues, one a 15 % minority, with duplicates; with_filler adds made-up words from a vocabulary of
thousands), each figure against its goal:

- training throughput: the `train` stage's tokens/s against a bare PyTorch loop on the same model and batches
  (goal ≥ 0.95×);
- the network against TF-IDF + logistic regression on the same test split, accuracy and macro-F1 (goal: not
  significantly worse, McNemar's exact test at 0.05);
- the shipped (compressed) variant against the fp32 PyTorch model: size (goal ≥ 4× smaller), batch-1 latency
  (goal ≥ 2× faster), macro-F1 within 1 point;
- served `/predict_text` throughput against the Bento's tokenizing and forward run back to back in process
  (goal ≥ 0.5×);
- training memory: peak resident memory of `python -m tasks.train` (one epoch) at 10× the rows (goal ≤ 1.2×).

`python -m benchmarks.text [--rows 6000]` (the stages run in this process, in a temporary project, with
params.yaml's defaults but the budgets below).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.record import save, table
from benchmarks.train_memory import run_train
from benchmarks.train_throughput import bare_loop

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 15
REPEATS = 3  # runs of each loop, in turn


def with_filler(path: Path, words: int = 5000, seed: int = 0) -> None:
    """Each ticket gets 3 to 12 more words drawn (Zipf-like) from `words` made-up words that say nothing of the
    queue: a vocabulary of thousands, as a real support export has, and noise both models must look past."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    made_up = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 9)))
                        for _ in range(words)])
    weights = 1.0 / np.arange(1, words + 1)
    frame = pd.read_csv(path)
    frame["message"] = [f"{m} " + " ".join(rng.choice(made_up, rng.integers(3, 13), p=weights / weights.sum()))
                        for m in frame["message"]]
    frame.to_csv(path, index=False)


def _trained(params, root: Path):
    """The `train` stage's samples/s per epoch (history.csv), and the stage's result."""
    import csv

    from tasks.train import train

    result = train(params, root, root / "prepared", root / "train")
    with (root / "train" / "history.csv").open() as handle:
        return [float(row["samples_per_s"]) for row in csv.DictReader(handle)], result


def _scores(predicted: np.ndarray, y: np.ndarray) -> dict:
    from sklearn.metrics import f1_score

    return {"accuracy": float((predicted == y).mean()), "f1_macro": float(f1_score(y, predicted, average="macro"))}


def quality(params, root: Path, data) -> dict:
    """The network, TF-IDF + logistic regression and the shipped variant on the same test split."""
    from tasks.common.dataset import load_split, served_inputs
    from tasks.compress.stage import compress
    from tasks.evaluate.baselines import fit_baselines
    from tasks.evaluate.gate import mcnemar
    from tasks.evaluate.stage import baseline_texts, predict_proba
    from tasks.nn.checkpoint import load_checkpoint
    from tasks.nn.latency import onnx_predictor, predicted_classes

    prepared = root / "prepared"
    model, _ = load_checkpoint(root / "train" / "model.pt")
    train, test = load_split(prepared / "train"), load_split(prepared / "test")
    network = predict_proba(model, np.asarray(test.x)).argmax(1)
    baselines = {b.name: b for b in fit_baselines(train.x, train.y, test.x, test.y, "table", params.base.seed,
                                                  texts=baseline_texts(prepared, data))}
    tfidf = baselines["tfidf_logistic_regression"]
    worse = mcnemar(tfidf.correct, network == test.y, params.evaluate.significance)  # is TF-IDF better?
    result = compress(params, root, prepared, root / "train", root / "compress")
    shipped = predicted_classes(onnx_predictor(root / "compress" / "model.onnx"), served_inputs(test.x, 1.0))
    rows = {r["variant"]: r for r in result.table}
    return {"network": _scores(network, test.y), "tfidf": {"accuracy": tfidf.accuracy, "f1_macro": tfidf.f1_macro},
            "p_tfidf_better": worse.p_value, "shipped_variant": result.chosen, "shipped": _scores(shipped, test.y),
            "fp32": rows["fp32-torch"], "chosen": rows[result.chosen], "test_rows": len(test.y)}


def served(root: Path, data, seconds: float = 4.0) -> dict:
    """The shipped model behind `bentoml serve`: /predict_text with one text a request (8 clients) and 64 a request
    (4 clients), texts/s, against the Bento's own preprocessing and forward run back to back in this process; and
    the same endpoint of a Bento whose model does nothing (the floor: HTTP, JSON and tokenizing, no forward).
    BENTOML_HOME is this run's (main sets it before BentoML is imported)."""
    import json

    import pandas as pd

    from tasks.common.config import load_params
    from tasks.nn.latency import onnx_predictor
    from tasks.package import build_bento
    from tasks.shipped.rows import encode_rows
    from tasks.shipped.text import text_layout

    choice = json.loads((root / "compress" / "choice.json").read_text())
    meta = {**{k: v for k, v in choice.items() if k != "reason"}, "encoding": data.encoding, "problem": data.problem}
    package = load_params(REPO / "params.yaml").package
    tag = build_bento(root / "compress" / "model.onnx", meta, {"variant": choice["variant"]}, package,
                      REPO / "bento").bento_tag
    floor = build_bento(_no_op(root, len(data.classes), data.features), {**meta, "variant": "no-op"},
                        {"variant": "no-op"}, package, REPO / "bento").bento_tag
    column = data.encoding["text"][0]["column"]
    texts = pd.read_parquet(root / "prepared" / "test" / "rows.parquet")[column].fillna("").astype(str).tolist()
    # as the service: one thread, each call's rows cut after their last token
    layout = text_layout(data.encoding, data.features)
    predict = onnx_predictor(root / "compress" / "model.onnx", threads=1, text=layout)
    figures: dict = {}
    for batch in (1, 64):
        chunks = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
        began, done = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            for chunk in chunks:
                predict(encode_rows([{column: t} for t in chunk], data.encoding))
                done += len(chunk)
        figures[batch] = {"in_process_texts_per_s": done / (time.perf_counter() - began)}
    for name, bento in (("served", tag), ("floor", floor)):
        for batch, found in _loaded(root, bento, name, texts, seconds).items():
            figures[batch] |= {f"{name}_{k}": v for k, v in found.items()}
    figures[1]["bentoml_floor"] = bentoml_floor(root, texts, seconds)  # one text a request
    for batch in (1, 64):
        figures[batch]["ratio"] = figures[batch]["served_texts_per_s"] / figures[batch]["in_process_texts_per_s"]
        figures[batch]["of_floor"] = figures[batch]["served_texts_per_s"] / figures[batch]["floor_texts_per_s"]
    return figures


def _no_op(root: Path, classes: int, features: int) -> Path:
    """An ONNX model that answers every row with equal probabilities, reading nothing."""
    import torch

    from tasks.compress.variants import export_onnx

    class NoOp(torch.nn.Module):
        def forward(self, rows):
            return torch.zeros(rows.shape[0], classes) + 1.0 / classes

    path = root / "no-op.onnx"
    export_onnx(NoOp(), np.zeros((1, features), np.float32), path)
    return path


def _loaded(root: Path, tag: str, name: str, texts: list[str], seconds: float) -> dict:
    """/predict_text of the Bento `tag` under `bentoml serve`, closed loop: 1 text a request from 8 clients, 64 from
    4; texts/s, p50 and errors per request size."""
    import json

    found = {}
    with _serving(root, name, [tag]) as base:
        for batch, clients in ((1, 8), (64, 4)):
            found[batch] = _posted(f"{base}/predict_text", json.dumps({"texts": texts[:batch]}).encode(), clients,
                                   seconds, batch)
    return found


FLOOR_SERVICE = '''"""BentoML's own per-request floor: an endpoint that reads its texts and answers without a model."""
import json

import bentoml


async def bare(scope, receive, send):  # an ASGI app: BentoML's middlewares only, none of its API layer
    body, more = b"", True
    while more:
        message = await receive()
        body, more = body + message.get("body", b""), message.get("more_body", False)
    answer = json.dumps([{"label": "", "probabilities": {}} for _ in json.loads(body)["texts"]]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


@bentoml.asgi_app(bare, path="/bare")
@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Floor:
    @bentoml.api
    async def predict_text(self, texts: list[str]) -> list[dict]:
        return [{"label": "", "probabilities": {}} for _ in texts]
'''


def bentoml_floor(root: Path, texts: list[str], seconds: float) -> dict:
    """The fastest any endpoint under `bentoml serve` answers one text a request here (8 clients, as `_loaded`): a
    minimal service's async API that does nothing (BentoML's defaults, access log off), and a bare ASGI app
    mounted in it (`bentoml.asgi_app`: BentoML's middlewares, none of its request parsing)."""
    import json

    (root / "floor_service.py").write_text(FLOOR_SERVICE)
    body = json.dumps({"texts": texts[:1]}).encode()
    with _serving(root, "bentoml-floor", ["floor_service:Floor", "--working-dir", str(root)]) as base:
        return {"api": _posted(f"{base}/predict_text", body, 8, seconds, 1),
                "mounted_asgi": _posted(f"{base}/bare/", body, 8, seconds, 1)}


def _posted(url: str, body: bytes, clients: int, seconds: float, batch: int) -> dict:
    import asyncio

    from benchmarks.serving import _closed_loop

    one = asyncio.run(_closed_loop(url, body, clients, seconds))
    return {"clients": clients, "texts_per_s": one["requests_per_s"] * batch, "p50_ms": one["p50_ms"],
            "errors": one["errors"]}


@contextmanager
def _serving(root: Path, name: str, what: list[str]) -> Iterator[str]:
    """`bentoml serve <what>` on a free loopback port until the block ends; yields its base URL."""
    import subprocess
    import sys

    from tests.support.processes import free_port, stop, wait_until_healthy

    port = free_port()
    (root / f"prometheus-{name}").mkdir()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PROMETHEUS_MULTIPROC_DIR": str(root / f"prometheus-{name}")}
    with (root / f"bento-{name}.log").open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", *what, "--host", "127.0.0.1", "--port",
                                   str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(server, f"http://127.0.0.1:{port}/readyz", f"bentoml serve {what[0]}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


def memory(root: Path, scale: int) -> dict:
    """`python -m tasks.train` for one epoch on the prepared set with its train split repeated `scale` times."""
    import shutil

    from tasks.common.dataset import Split, load_split, save_split

    project = root / f"memory{scale}"
    shutil.copytree(root / "prepared", project / "data" / "prepared")
    train = load_split(project / "data" / "prepared" / "train")
    save_split(project / "data" / "prepared" / "train", Split(np.tile(train.x, (scale, 1)), np.tile(train.y, scale)))
    return {"rows": len(train.y) * scale, **run_train(project, 256, model="transformer")}


def main(argv: list[str] | None = None) -> None:
    from tasks.common.config import load_params
    from tasks.common.dataset import load_split, prepared_meta
    from tasks.ingest import ingest
    from tasks.prepare import prepare
    from tasks.shipped.text import text_layout
    from tests.support.own_data import tickets_csv

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6000)
    rows = parser.parse_args(argv).rows
    with tempfile.TemporaryDirectory(prefix="bench-text-") as tmp:
        root = Path(tmp)
        os.environ["BENTOML_HOME"] = str(root / "bentoml")  # read once, when BentoML is first imported (served)
        tickets_csv(root / "tickets.csv", rows=rows, duplicates=rows // 20, text_only=True)
        with_filler(root / "tickets.csv")
        params = load_params(REPO / "params.yaml")
        params = params.model_copy(update={
            "ingest": params.ingest.model_copy(update={"path": "tickets.csv", "label_column": "queue"}),
            "train": params.train.model_copy(update={"epochs": EPOCHS, "patience": EPOCHS, "model": "transformer"})})
        ingest(params.ingest, root, root / "raw")
        prepare(params.prepare, params.base.seed, root / "raw", root / "prepared")
        data = prepared_meta(root / "prepared")
        layout = text_layout(data.encoding, data.features)
        x = np.asarray(load_split(root / "prepared" / "train").x)
        tokens_per_text = float((x[:, layout["dense"]:] != 0).sum(1).mean())
        bare, stage = [], []
        for i in range(REPEATS):  # in turn: the machine's drift falls on both
            bare.append(bare_loop(params, root / "prepared", EPOCHS, layout))
            stage.append(_trained(params, root)[0])
        figures = {"rows": rows, "epochs": EPOCHS, "length": layout["length"], "vocab": layout["vocab"],
                   "tokens_per_text": tokens_per_text, "model": params.train.model,
                   "bare_tokens_per_s": max(float(np.median(r[1:])) for r in bare) * tokens_per_text,
                   "stage_tokens_per_s": max(float(np.median(r[1:])) for r in stage) * tokens_per_text}
        figures["throughput_ratio"] = figures["stage_tokens_per_s"] / figures["bare_tokens_per_s"]
        figures |= quality(params, root, data)
        figures["served"] = served(root, data)
        figures["memory"] = [memory(root, scale) for scale in (1, 10)]
    _record(figures)


def _bentoml_rows(served: dict) -> list[list[str]]:
    """BentoML's own floor at one text a request, and the ratio it leaves room for: a request's cost is at least
    the floor's plus the in-process work, so served / in process ≤ floor / (floor + in process)."""
    floor, alone = served[1]["bentoml_floor"], served[1]["in_process_texts_per_s"]
    rows = []
    for key, what in (("api", "a minimal BentoML service's async API that does nothing"),
                      ("mounted_asgi", "a bare ASGI app mounted in it (BentoML's middlewares only)")):
        rate = floor[key]["texts_per_s"]
        rows.append([f"{what}, 1 text a request (8 clients)",
                     f"{rate:.0f} texts/s; with the in-process work on top ≤ {rate / (rate + alone):.2f}× of in process",
                     "", ""])
    return rows


def _record(f: dict) -> None:
    fp32, chosen = f["fp32"], f["chosen"]
    smaller, faster = fp32["size_bytes"] / chosen["size_bytes"], fp32["latency_b1_ms"] / chosen["latency_b1_ms"]
    f1_drop = f["network"]["f1_macro"] - f["shipped"]["f1_macro"]
    peak = f["memory"][1]["peak_rss_mb"] / f["memory"][0]["peak_rss_mb"]
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    body = table(["figure", "measured", "goal", ""], [
        ["training throughput, tokens/s (stage vs bare loop)",
         f"{f['stage_tokens_per_s']:.0f} vs {f['bare_tokens_per_s']:.0f} ({f['throughput_ratio']:.2f}×)", "≥ 0.95×",
         verdict(f["throughput_ratio"] >= 0.95)],
        ["network vs TF-IDF + LR: accuracy", f"{f['network']['accuracy']:.4f} vs {f['tfidf']['accuracy']:.4f}",
         "not significantly worse", verdict(f["p_tfidf_better"] >= 0.05)],
        ["network vs TF-IDF + LR: macro-F1", f"{f['network']['f1_macro']:.4f} vs {f['tfidf']['f1_macro']:.4f}",
         f"McNemar p = {f['p_tfidf_better']:.3g}", ""],
        [f"shipped ({f['shipped_variant']}) size vs fp32 PyTorch",
         f"{chosen['size_bytes'] / 1024:.0f} KB vs {fp32['size_bytes'] / 1024:.0f} KB ({smaller:.2f}×)", "≥ 4× smaller",
         verdict(smaller >= 4)],
        ["shipped latency at batch 1", f"{chosen['latency_b1_ms']:.3f} ms vs {fp32['latency_b1_ms']:.3f} ms "
         f"({faster:.2f}×)", "≥ 2× faster", verdict(faster >= 2)],
        ["shipped macro-F1 vs the network", f"{f['shipped']['f1_macro']:.4f} vs {f['network']['f1_macro']:.4f}",
         "within 0.01", verdict(f1_drop <= 0.01)],
        *[[f"served `/predict_text`, {b} text(s) a request ({f['served'][b]['served_clients']} clients) vs in process",
           f"{f['served'][b]['served_texts_per_s']:.0f} vs {f['served'][b]['in_process_texts_per_s']:.0f} texts/s "
           f"({f['served'][b]['ratio']:.2f}×; p50 {f['served'][b]['served_p50_ms']:.1f} ms)", "≥ 0.5×",
           verdict(f["served"][b]["ratio"] >= 0.5)] for b in (1, 64)],
        *[[f"served `/predict_text`, {b} text(s) a request, vs the same endpoint with a model that does nothing",
           f"{f['served'][b]['served_texts_per_s']:.0f} vs {f['served'][b]['floor_texts_per_s']:.0f} texts/s "
           f"({f['served'][b]['of_floor']:.2f}×)", "", ""] for b in (1, 64)],
        *_bentoml_rows(f["served"]),
        ["training peak RSS, 10× the rows", f"{f['memory'][1]['peak_rss_mb']:.0f} MB vs "
         f"{f['memory'][0]['peak_rss_mb']:.0f} MB ({peak:.2f}×)", "≤ 1.2×", verdict(peak <= 1.2)],
    ])
    note = (f"{f['rows']:,} generated tickets (text only; 3 to 12 made-up filler words each, from 5,000), split "
            "65/15/20; the tokenizer's length "
            f"{f['length']} tokens (mean {f['tokens_per_text']:.1f} real), vocabulary {f['vocab']}; "
            f"`train.model: {f['model']}` (the Transformer), {f['epochs']} epochs, params.yaml's other defaults; "
            f"{f['test_rows']} test rows. Throughput: best of {REPEATS} runs' medians over epochs 2–{f['epochs']}, "
            "the stage's figure the samples/s it logs (the training pass only, as the bare loop's) × real tokens "
            "per text. Served: the shipped variant's Bento (params.yaml's `package` defaults: one worker, one ONNX "
            "Runtime thread) on loopback, clients in this process; in process: the Bento's row encoding "
            "(tokenizing) and the ONNX model on one thread, back to back; the floor: the same Bento and endpoint "
            "around a model that answers without reading its input (HTTP, JSON, tokenizing and the skew checks "
            "only), measured in the same run; BentoML's own floor: a minimal service whose async API returns "
            "without a model, and a bare ASGI app mounted in it (`FLOOR_SERVICE` in benchmarks/text.py), "
            "same clients, same run.")
    save("text", title="Text: the Transformer on support tickets against TF-IDF, compressed, and its training cost",
         command="python -m benchmarks.text", markdown=note + "\n\n" + body, figures=f)
    print(body)


if __name__ == "__main__":
    main()
