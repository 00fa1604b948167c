"""Train/serve skew, per worker: every served input checked against the training inputs' statistics (counted in
the Prometheus counter `input_skew_violations_total{check=...}` and in /metadata), refusals counted by check, and
the latest inputs kept for drift checks (GET /recent_inputs). The serving front's warm-up requests are not users'
inputs: they are neither counted nor kept."""

from __future__ import annotations

import contextvars
import threading
from collections import deque

import bentoml
import numpy as np

from bento.service.build import EXPECTED, KIND, args
from tasks.shipped.skew import violations

SKEW = bentoml.metrics.Counter(name="input_skew_violations", labelnames=["check"],
                               documentation="served inputs outside what the training inputs looked like, per check")



# Set for a request carrying `X-Warm-Up: <the token in BENTO_WARM_UP_TOKEN>` (the serving front's warm-up of a new
# Bento, guard.py): its inputs are not
# users' inputs, so they are neither counted nor kept for drift checks.
WARM_UP: contextvars.ContextVar[bool] = contextvars.ContextVar("warm_up", default=False)


class SkewLog:
    """This worker's record of what it was sent: inputs checked, violations and refusals per check, the latest
    inputs. Written per request, before batching, so a warm-up request can be told apart."""

    def __init__(self, keep: int) -> None:
        self.recent: deque[np.ndarray] = deque(maxlen=keep)
        self.checked, self.violations, self.refused, self.lock = 0, {}, {}, threading.Lock()

    def observe(self, inputs: np.ndarray) -> None:
        if WARM_UP.get():
            return
        found = violations(inputs, KIND, EXPECTED) if EXPECTED else {}
        for check, count in found.items():
            SKEW.labels(check=check).inc(count)
        with self.lock:
            self.checked += len(inputs)
            for check, count in found.items():
                self.violations[check] = self.violations.get(check, 0) + count
            self.recent.extend(np.array(inputs, dtype=np.float32))

    def refuse(self, check: str) -> None:
        if WARM_UP.get():
            return
        SKEW.labels(check=check).inc()
        with self.lock:
            self.refused[check] = self.refused.get(check, 0) + 1

    def summary(self) -> dict:
        with self.lock:
            return {"checked_against": (EXPECTED or {}).get("data_version", "nothing (no expectations stored)"),
                    "inputs_checked": self.checked, "violations": {**self.violations}, "refused": {**self.refused}}

    def latest(self) -> list:
        with self.lock:
            return [x.tolist() for x in self.recent]


SEEN = SkewLog(args.recent_inputs)
