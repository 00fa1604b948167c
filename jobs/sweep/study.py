"""Where a sweep's study lives, and what a restarted sweep does with the trials a killed one left running.

A journal file (one machine: Optuna's JournalFileBackend, safe for parallel worker processes) by default;
PostgreSQL or MySQL when trials run on several machines, with Optuna's heartbeat (a trial whose worker went silent
is failed and re-queued); SQLite is refused for more than one worker, which corrupts or locks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.common.errors import ConfigError


@dataclass(frozen=True)
class StorageSpec:
    """What a worker needs to open the study's storage itself (a storage object does not travel)."""

    kind: str  # journal | rdb
    location: str  # the journal file's path, or the database URL
    heartbeat_seconds: int = 30

    def open(self):
        import optuna

        if self.kind == "journal":
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(self.location))
        if self.location.startswith("sqlite"):
            return optuna.storages.RDBStorage(self.location)
        return optuna.storages.RDBStorage(
            self.location, heartbeat_interval=self.heartbeat_seconds, grace_period=4 * self.heartbeat_seconds,
            failed_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))


def storage_spec(setting: str, study_dir: Path, parallel: int, remote: bool, heartbeat_seconds: int) -> StorageSpec:
    """The storage `sweep.storage` names, refused where it cannot work."""
    if setting.startswith("sqlite") and parallel > 1:
        raise ConfigError(
            f"sweep.storage is SQLite ({setting}) with {parallel} trials at once: SQLite does not take writes from "
            "parallel workers ('database is locked', lost trials; optuna#820). Leave sweep.storage empty for a "
            "journal file on this machine, use postgresql://... for a cluster, or run with --parallel 1")
    if "://" in setting:
        return StorageSpec("rdb", setting, heartbeat_seconds)
    if remote and not setting:
        raise ConfigError(
            "trials on a cluster need the study where every worker can reach it: set sweep.storage to "
            "postgresql://user:password@host/db, or to a journal file's path on a filesystem every worker shares")
    return StorageSpec("journal", setting or str(study_dir / "journal.log"), heartbeat_seconds)


def requeue_stale(study, spec: StorageSpec) -> list[int]:
    """Fail the trials a killed sweep left running and queue each again with its parameters; their numbers.

    A trial killed before it drew all its parameters is queued with those it drew; its copy draws the rest.

    Called with the sweep's lock held: on a journal (one machine, one driver) a running trial is a dead one. A
    database has Optuna's heartbeat for that: trials silent past the grace period are failed and re-queued."""
    import optuna
    from optuna.trial import TrialState

    if spec.kind == "rdb":
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        optuna.storages.fail_stale_trials(study)
        return sorted(t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t.number in before)
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    storage = study._storage  # Optuna has no public call to fail another process's trial
    for trial in stale:
        storage.set_trial_user_attr(trial._trial_id, "requeued", True)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
    return [t.number for t in stale]


def abandoned(trials) -> set[int]:
    """The trials a killed sweep or a dead worker left behind, failed and queued again (their copy runs instead)."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in trials}
    retried |= {number for t in trials for number in t.system_attrs.get("retry_history", [])}  # Optuna's heartbeat
    return {t.number for t in trials
            if t.state == TrialState.FAIL and (t.number in retried or t.user_attrs.get("requeued"))}


def finished(trials) -> list:
    """The trials that count towards `sweep.trials`: complete, pruned, or failed by their own parameters; not the
    abandoned ones, whose re-queued copy counts instead."""
    from optuna.trial import TrialState

    left = abandoned(trials)
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in left)]
