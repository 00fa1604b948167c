"""Credentials masked in whatever the pipeline records."""

from tasks.common.config import with_overrides
from tasks.common.secrets import redact


def test_url_passwords_and_password_parameters_are_masked_and_nothing_else_changes():
    masked = redact("postgresql://optuna:hunter2@db.internal:5432/study")
    assert masked == "postgresql://optuna:***@db.internal:5432/study"
    assert redact("postgresql+psycopg2://u:p%40ss@h/db") == "postgresql+psycopg2://u:***@h/db"
    assert redact("https://h/x?user=a&password=hunter2&x=1") == "https://h/x?user=a&password=***&x=1"
    for kept in ("postgresql://optuna@db/study", "sweeps/journal.log", "http://127.0.0.1:3001", "a:b@c (not a URL)"):
        assert redact(kept) == kept


def test_recorded_params_mask_the_sweep_storage_url_the_run_still_uses(params):
    url = "postgresql://optuna:hunter2@db/study"
    configured = with_overrides(params, {"sweep.storage": url})
    assert configured.sweep.storage == url  # what the sweep connects with
    recorded = configured.recorded()
    assert recorded["sweep"]["storage"] == "postgresql://optuna:***@db/study"
    assert "hunter2" not in str(recorded) and recorded["train"] == configured.as_dict()["train"]
