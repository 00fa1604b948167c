"""The serving front door: one public port in front of a `bentoml serve` process, replaced without downtime.

`mlops serve` starts the champion's Bento on a private loopback port and forwards every HTTP
request that reaches the public port (3000) to it. A roll-out (`mlops rollout TAG`, or the
pipeline after it promotes a new champion) starts the new Bento on another private port, waits until it
answers `/readyz`, warms it up with a few requests, sends every new request to it, lets the old one finish the requests it holds, then stops it.
Requests are forwarded one at a time, so a client's keep-alive connection to the front outlives the switch.
A Bento that fails to start or to become ready is stopped and the old one keeps serving.

The admin endpoints (`GET /status`, `POST /rollout`) listen on their own port, on loopback.

    supervisor.py  start, warm up and stop `bentoml serve` processes (also the promote stage's serving check)
    own_metrics.py `bentoml serve` with a Prometheus folder of its own (every Bento the project starts)
    proxy.py       the public port: forward each request to the current back-end; roll-outs replace it
    admin.py       the admin port, the server running both ports, and the client calls to it
"""
