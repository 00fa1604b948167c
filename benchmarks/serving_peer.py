"""The simplest peer of the Bento service, for benchmarks/serving.py: one FastAPI endpoint, the same ONNX model.

    SERVING_PEER_MODEL=artifacts/compress/model.onnx uvicorn benchmarks.serving_peer:app --port 3100

The same JSON in and out as the Bento's /predict (class names, probabilities keyed by them), with no checks beyond
what NumPy refuses and no batching.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

options = ort.SessionOptions()
options.intra_op_num_threads = 1
session = ort.InferenceSession(os.environ["SERVING_PEER_MODEL"], options, providers=["CPUExecutionProvider"])
classes = [str(k) for k in range(session.get_outputs()[0].shape[1])]  # the digits' names; others are in /metadata
app = FastAPI()


class Request(BaseModel):
    images: list


@app.post("/predict")
def predict(request: Request) -> list[dict]:
    probabilities = session.run(None, {"images": np.asarray(request.images, dtype=np.float32)})[0]
    return [{"label": classes[int(p.argmax())], "probabilities": dict(zip(classes, p.tolist()))} for p in probabilities]
