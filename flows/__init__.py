"""Prefect flows: thin shells over the DVC DAG and the stage functions in tasks/.

Prefect's settings every flow of this project needs, set here (before any flow module imports Prefect) unless the
user set them: they reach the temporary local server Prefect starts when `PREFECT_API_URL` is unset, which reads
its settings from the environment it inherits.
"""

import os

DEFAULTS = {
    # The temporary server migrates a fresh database on first start: on 2 cores that can pass Prefect's default
    # wait (20 s) and fail the run before any stage.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # No usage telemetry: offline, its heartbeat logs "ERROR ... Failed to send telemetry" on every run (and a
    # "database is locked" traceback when it races the first migration). The project's own server turns it off too
    # (flows/prefect_server.py).
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # MLflow logs its database migrations and model registrations at INFO, on every run against a fresh store: its
    # warnings and errors are what a person needs to see (it reads this when it is first imported).
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}
for _key, _value in DEFAULTS.items():
    os.environ.setdefault(_key, _value)
