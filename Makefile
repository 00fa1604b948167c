# `make run` and `make test` are all a new user needs: both install into .venv first if needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export BENTOML_DO_NOT_TRACK := true
export DO_NOT_TRACK := true

.PHONY: install browser run test test-fast bench repro ui serve schedule schedule-status clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .   # the `mlops` command (cli/)
	$(BIN)/python -m flows.prefect_database   # an empty Prefect database, migrated once: new projects' servers copy it
	touch $(STAMP)

# The validation report's browser test opens it in Debian's Chromium (Playwright drives it; it downloads no browser).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:  ## Debian's chromium, when missing (apt-get; sudo unless root)
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser test (apt-get)"; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }

run: install  ## the whole pipeline as a Prefect flow: on the bundled digits, or DATA=path [LABEL=column] [NEW=1]
	$(BIN)/mlops run $(if $(DATA),--data "$(DATA)") $(if $(LABEL),--label "$(LABEL)") $(if $(NEW),--new-dataset) $(ARGS)

# The suite waits on subprocesses and servers most of the time: worker processes overlap the waits (pytest-xdist;
# a test module stays on one worker, with its module fixtures). TEST_WORKERS=0 runs it in this one process.
# OMP_WAIT_POLICY=PASSIVE: an idle OpenMP thread (torch's) sleeps instead of spinning, so the workers' trainings
# do not burn the cores each other need; results are the same, only the waiting changes.
TEST_WORKERS ?= 3
PYTEST := OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test: install browser  ## every test, offline, on CPU (tests/: unit, stages, serving, integration, e2e)
	$(PYTEST) $(ARGS)

test-fast: install browser  ## the unit and stage tests not marked slow: the edit-test loop (under 3 minutes)
	$(PYTEST) tests/unit tests/stages -m "not slow" $(ARGS)

bench: run  ## every benchmark in benchmarks/, then rewrite BENCHMARKS.md (minutes; not a test)
	$(BIN)/python -m benchmarks.compression
	$(BIN)/python -m benchmarks.compression_backends
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.train_memory
	$(BIN)/python -m benchmarks.orchestration
	$(BIN)/python -m benchmarks.cli_startup
	$(BIN)/python -m benchmarks.fixed_cost
	$(BIN)/python -m benchmarks.serving
	$(BIN)/python -m benchmarks.serving --overload
	$(BIN)/python -m benchmarks.scoring
	$(BIN)/python -m benchmarks.sweep
	$(BIN)/python -m benchmarks.text
	$(BIN)/python -m benchmarks.tables
	$(BIN)/python -m benchmarks.report

repro: install  ## the same DAG through DVC alone
	$(BIN)/dvc repro

ui: install  ## the MLflow UI over the project's store
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

serve: install  ## the champion's Bento behind the serving front on http://127.0.0.1:3000 (roll-outs without downtime)
	$(BIN)/mlops serve --port 3000 --admin-port 3001

schedule: install  ## nightly runs on this machine: the project's Prefect server (UI http://127.0.0.1:4200) + the cron deployment
	$(BIN)/mlops schedule $(ARGS)

schedule-status: install  ## the deployments, their next scheduled run and their last runs
	$(BIN)/mlops schedule status $(ARGS)

clean:  ## remove stage outputs and local stores (keeps .venv)
	rm -rf artifacts data/raw data/prepared mlflow.db mlartifacts dvc.lock
