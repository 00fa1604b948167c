"""Zero-downtime roll-out on loopback: a real front (`mlops serve`) in front of real `bentoml serve`
processes, under a steady stream of requests while the Bento behind it is replaced."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tasks.common.outputs import BentoBuild, Promotion
from tests.support.processes import REPO, free_port, stop, wait_until_healthy
from tests.support.servers import serve_bento
ADMIN_TOKEN = "the-admin-token"  # FRONT_ADMIN_TOKEN for the front and its clients here
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

DIGIT = [[0, 0, 5, 13, 9, 1, 0, 0], [0, 0, 13, 15, 10, 15, 5, 0], [0, 3, 15, 2, 0, 11, 8, 0], [0, 4, 12, 0, 0, 8, 8, 0],
         [0, 5, 8, 0, 0, 9, 8, 0], [0, 4, 11, 0, 1, 12, 7, 0], [0, 2, 14, 5, 10, 12, 0, 0], [0, 0, 6, 13, 10, 0, 0, 0]]


@pytest.fixture(scope="module")
def bentos(bento_store, tmp_path_factory):
    """Two Bentos of a small digits model, the environment that reaches their store, and a project folder."""
    base = tmp_path_factory.mktemp("rollout")
    info, env = bento_store.built["digits"], bento_store.env
    root = base / "project"  # a front needs only params.yaml; it keeps its Bentos' logs in .serving/
    root.mkdir()
    shutil.copyfile(REPO / "params.yaml", root / "params.yaml")
    return info["bentos"], env, root


class Front:
    def __init__(self, tag: str, env: dict, root: Path):
        self.port, self.admin_port = free_port(), free_port()
        self.url, self.admin = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.admin_port}"
        self.env, self.root = {**env, "FRONT_ADMIN_TOKEN": ADMIN_TOKEN}, root
        self.printed = root / f"front-{self.port}.out"  # what it prints: never the token
        with open(self.printed, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cli", "serve", "--bento", tag, "--port", str(self.port),
                 "--admin-port", str(self.admin_port), "--root", str(root)],
                cwd=REPO, env=self.env, stdout=out, stderr=subprocess.PIPE, text=True)
        wait_until_healthy(self.process, f"{self.admin}/healthz", "the front")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cli", *args, "--admin", self.admin], cwd=REPO,
                              env=self.env, capture_output=True, text=True, timeout=300)

    def status(self) -> dict:
        return httpx.get(f"{self.admin}/status", timeout=10, headers=AUTH).json()


@pytest.fixture(scope="module")
def front(bentos):
    tags, env, root = bentos
    running = Front(tags[0], env, root)
    yield running
    stop(running.process)


class Load:
    """Clients sending /predict back to back on keep-alive connections; every answer's status and Bento kept."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.answers, self.errors = url, [], []
        self._done = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._done.is_set():
                try:
                    began = time.monotonic()
                    answer = http.post("/predict", json={"images": [DIGIT] * 8})
                    self.answers.append((began, answer.status_code, answer.headers.get("x-bento-tag")))
                except httpx.HTTPError as err:
                    self.errors.append(repr(err))

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_):
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_rollout_under_load_switches_bentos_without_a_failed_request(bentos, front):
    tags, _, _ = bentos
    old_pid = front.status()["backend_pid"]
    assert front.status()["bento"] == tags[0]
    with Load(front.url) as load:
        time.sleep(1.0)
        asked = time.monotonic()
        rolled = front.cli("rollout", tags[1])
        answered = time.monotonic()
        time.sleep(1.0)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    record = json.loads(rolled.stdout)
    assert record["from"] == tags[0] and record["to"] == tags[1] and record["drained"] is True
    assert not load.errors, load.errors[:5]
    assert {status for _, status, _ in load.answers} == {200}, [a for a in load.answers if a[1] != 200][:10]
    before = {tag for began, _, tag in load.answers if began < asked}
    after = [tag for began, _, tag in load.answers if began > answered]
    assert before == {tags[0]} and set(after) == {tags[1]} and len(after) > 10  # requests sent once it was done
    assert {tag for began, _, tag in load.answers if asked <= began <= answered} <= set(tags[:2])
    status = front.status()
    assert status["bento"] == tags[1] and [h["to"] for h in status["history"]] == tags[:2]
    deadline = time.monotonic() + 30
    while _alive(old_pid) and time.monotonic() < deadline:  # the old `bentoml serve` is stopped
        time.sleep(0.2)
    assert not _alive(old_pid)


def test_asking_again_for_the_served_bento_switches_nothing(front):
    """A roll-out asked twice (a run killed before the front answered, then the next run) switches once."""
    before = front.status()
    asked = front.cli("rollout", before["bento"])
    assert asked.returncode == 0, asked.stderr[-3000:]
    assert json.loads(asked.stdout)["already_serving"] is True
    after = front.status()
    assert (after["backend_pid"], after["history"]) == (before["backend_pid"], before["history"])


def _served_predictions(url: str) -> float:
    """The Bento behind `url`'s count of /predict answered 200, from its /metrics."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("bentoml_service_request_total{") and 'endpoint="/predict"' in line
               and 'http_response_code="200"' in line)


def test_starting_another_bento_leaves_the_live_ones_counters_alone(bentos, front):
    """BentoML empties one shared Prometheus folder whenever a server starts: a roll-out's new back-end or promote's
    serving check wiped the live Bento's counters. Each Bento the project starts has its own folder now."""
    tags, env, root = bentos
    live = front.status()["bento"]
    for _ in range(5):
        assert httpx.post(f"{front.url}/predict", json={"images": [DIGIT]}, timeout=30).status_code == 200
    before = _served_predictions(front.url)
    assert before >= 5
    other = tags[0] if live == tags[1] else tags[1]
    beside, beside_url = serve_bento(other, env, root)  # as promote's serving check starts a candidate
    try:
        assert httpx.post(f"{beside_url}/predict", json={"images": [DIGIT]}, timeout=30).status_code == 200
        assert _served_predictions(front.url) == before  # the live one's counters, untouched
        assert _served_predictions(beside_url) == 1  # the other counts its own
    finally:
        stop(beside)
    assert _served_predictions(front.url) == before
    # a roll-out starts the new back-end beside the live one: counters from the switch on are the new one's own
    rolled = front.cli("rollout", other)
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert httpx.post(f"{front.url}/predict", json={"images": [DIGIT]}, timeout=30).status_code == 200
    assert _served_predictions(front.url) >= 1


def test_a_bento_that_cannot_start_is_refused_and_the_running_one_keeps_serving(front):
    before = front.status()["bento"]
    with Load(front.url, clients=2) as load:
        refused = front.cli("rollout", "digits_classifier:doesnotexist")
    assert refused.returncode == 1
    assert "no Bento 'digits_classifier:doesnotexist' in this machine's BentoML store" in refused.stderr
    assert f"still serving {before}" in refused.stderr, refused.stderr
    assert front.status()["bento"] == before
    assert not load.errors and {status for _, status, _ in load.answers} == {200}
    bad_body = httpx.post(f"{front.admin}/rollout", json={"tag": "x"}, timeout=10, headers=AUTH)
    assert bad_body.status_code == 400 and "bento" in bad_body.json()["error"]


def test_the_admin_api_takes_only_its_token_json_and_a_bento_in_the_store(front, tmp_path):
    before, rolled = front.status()["bento"], len(front.status()["history"])
    rollout = f"{front.admin}/rollout"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        assert httpx.get(f"{front.admin}/status", headers=headers, timeout=10).status_code == 401
        assert httpx.post(rollout, json={"bento": before}, headers=headers, timeout=10).status_code == 401
    # a cross-site "simple" POST (text/plain or a form) is refused even with the token
    as_text = httpx.post(rollout, content=json.dumps({"bento": before}), timeout=10,
                         headers={**AUTH, "Content-Type": "text/plain"})
    assert as_text.status_code == 415 and "JSON" in as_text.json()["error"]
    planted = tmp_path / "planted.py"
    planted.write_text("raise SystemExit('imported')\n")
    for value in (str(planted), "../../etc/passwd", "--help", "http://127.0.0.1/x", "a:b:c", "", 7):
        refused = httpx.post(rollout, json={"bento": value}, headers=AUTH, timeout=10)
        assert refused.status_code == 400, (value, refused.text)
    unknown = httpx.post(rollout, json={"bento": "digits_classifier:notbuilt"}, headers=AUTH, timeout=10)
    assert unknown.status_code == 400 and "no Bento 'digits_classifier:notbuilt'" in unknown.json()["error"]
    assert front.status()["bento"] == before and len(front.status()["history"]) == rolled  # nothing was started
    assert not list((front.root / ".serving").glob("*planted*")) and not list((front.root / ".serving").glob("*passwd*"))
    printed = front.printed.read_text()
    assert "serving " in printed and "admin-token" in printed and ADMIN_TOKEN not in printed


def test_the_admin_token_goes_to_loopback_or_an_allow_listed_host_only(front, monkeypatch):
    """rollout.admin_url is a param any run's overrides can set: it cannot send the token anywhere else."""
    from bento.front.admin import AdminAddressRefused, check_admin_url, serving_status

    assert serving_status(front.admin.replace("127.0.0.1", "localhost"), ADMIN_TOKEN)["bento"]
    for url in ("http://10.1.2.3:3001", "http://admin.attacker.example:3001", "http://127.0.0.1.nip.io:3001",
                "ftp://127.0.0.1:3001", "http://user:pw@127.0.0.1:3001", "http://127.0.0.1:99999"):
        with pytest.raises(AdminAddressRefused, match="rollout.admin_url"):
            serving_status(url, ADMIN_TOKEN)  # refused before any connection is made
    monkeypatch.setenv("FRONT_ADMIN_HOSTS", "serving.internal, 10.1.2.3")
    check_admin_url("http://10.1.2.3:3001")
    check_admin_url("https://serving.internal:3001")
    with pytest.raises(AdminAddressRefused, match="serving.internal"):
        check_admin_url("http://admin.attacker.example:3001")


def test_a_bento_not_ready_in_time_is_stopped_and_the_old_one_stays(bentos, front):
    tags, _, _ = bentos
    before = front.status()["bento"]
    other = tags[0] if before == tags[1] else tags[1]
    refused = front.cli("rollout", other, "--ready-timeout", "0.3")  # `bentoml serve` needs seconds to start
    assert refused.returncode == 1 and "was not ready within 0.3 s" in refused.stderr, refused.stderr
    assert front.status()["bento"] == before
    assert httpx.post(f"{front.url}/predict", json={"images": [DIGIT]}, timeout=30).status_code == 200
    leftovers = subprocess.run(["pgrep", "-f", f"bento.front.own_metrics {other}"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"the Bento that was not ready is still running: {leftovers}"


def test_the_flow_step_rolls_out_only_a_promoted_champion_not_already_served(bentos, front, tmp_path, monkeypatch):
    monkeypatch.setenv("FRONT_ADMIN_TOKEN", ADMIN_TOKEN)  # as a worker configured for this front would have it
    from bento.front.supervisor import BackendFailed
    from flows.rollout import roll_out_champion

    tags, _, _ = bentos
    served = front.status()["bento"]
    other = tags[0] if served == tags[1] else tags[1]
    (tmp_path / "artifacts/promote").mkdir(parents=True)
    (tmp_path / "artifacts/package").mkdir(parents=True)
    outputs = lambda promoted, tag: (  # noqa: E731
        Promotion(version="7", promoted=promoted, reason="the test's", previous_champion=None, bento_tag=tag).write(
            tmp_path / "artifacts/promote/promotion.json"),
        BentoBuild(bento_tag=tag, model_tag="m:1").write(tmp_path / "artifacts/package/bento.json"))
    outputs(False, other)
    assert roll_out_champion(tmp_path, front.admin)["action"] == "kept"  # not promoted: the served one stays
    assert roll_out_champion(tmp_path, "")["action"] == "none"  # no front configured
    outputs(True, served)
    assert roll_out_champion(tmp_path, front.admin)["reason"] == f"the front already serves {served}"
    outputs(True, other)
    done = roll_out_champion(tmp_path, front.admin)
    assert done["action"] == "rolled out" and done["from"] == served and done["to"] == other
    assert front.status()["bento"] == other and not (tmp_path / ".serving/rollout.pending").exists()
    (tmp_path / ".serving/rollout.pending").write_text("{}")  # what a run killed while the front switched leaves
    assert roll_out_champion(tmp_path, front.admin)["action"] == "kept"  # the front finished it: the next run says so
    assert not (tmp_path / ".serving/rollout.pending").exists()
    with pytest.raises(BackendFailed, match="no serving front answered"):
        roll_out_champion(tmp_path, f"http://127.0.0.1:{free_port()}")


def test_the_front_forwards_the_path_as_the_client_sent_it(front):
    """`/livez/%2e%2e/recent_inputs`, decoded and normalised by the front, would reach the Bento as /recent_inputs."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    try:
        for raw, status in (("/livez/%2e%2e/recent_inputs", 404), ("/livez/%2E%2E/%2e%2e/metadata", 404),
                            ("/livez", 200), ("/metadata?x=%2F..%2F", 200)):
            connection.request("GET", raw)
            answer = connection.getresponse()
            body = answer.read()
            assert answer.status == status, (raw, answer.status, body[:200])
            assert b'"inputs"' not in body
    finally:
        connection.close()
