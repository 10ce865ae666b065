# Two commands: `make demo` and `make test`. Both create .venv and install from pyproject.toml.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

PORT ?= 7233
UI_PORT ?= 8233

.PHONY: demo dev test bench lint typecheck replay clean browser-deps compose-deps

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "need $(PY) (set PY=python3 to use another)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The demo runs on the `handoff dev` loop and leaves it up (UI, codec server, worker)
# until Ctrl-C; `make demo PORT=7300 UI_PORT=8300` when 7233/8233 are taken.
demo: $(STAMP)
	$(BIN)/handoff demo --port $(PORT) --ui-port $(UI_PORT)

# Reopen the UI on the demo's data (same .handoff/), with the codec server wired in.
dev: $(STAMP)
	$(BIN)/handoff dev --port $(PORT) --ui-port $(UI_PORT)

# Debian chromium for the browser test (Playwright drives it via executable_path).
browser-deps:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "warning: could not install chromium; the browser test will fail"

# Debian docker-compose for the compose-file test (`docker-compose config`; no engine needed).
compose-deps:
	@command -v docker-compose >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; } \
		|| echo "warning: could not install docker-compose; the compose test will fail"

test: $(STAMP) browser-deps compose-deps
	$(BIN)/ruff check temporal_handoff tests bench
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check temporal_handoff tests bench
	$(BIN)/mypy temporal_handoff

clean:
	rm -rf $(VENV) .handoff
