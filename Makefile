# Two commands matter: `make run` and `make test`. The rest are steps they use.
SHELL := /bin/bash
# Lets tox find python3.12 and python3.13 on machines that manage Pythons with pyenv.
export PYENV_VERSION := 3.11.7:3.12.1:3.13.0

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
export PORT
MANAGE := cd example_project && ../$(BIN)/python manage.py
TOX_ENVS ?= lint,migrations,py311-django52,py312-django60,py313-django61-services,docs,package

.PHONY: run test venv lint format docs demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml example_project/requirements.txt
	$(BIN)/pip install --quiet -r example_project/requirements.txt "tox>=4.22"
	touch $@

venv: $(VENV)/.installed

## Serve the controller, the scheduler and a reference dispatcher on embedded defaults
## (SQLite, local memory, files in var/), with the demo skill and workflow seeded.
run: venv
	mkdir -p var
	$(MANAGE) migrate --noinput
	$(MANAGE) collectstatic --noinput --verbosity 0
	$(MANAGE) seed_demo
	$(BIN)/python example_project/run.py

## With `make run` going in another terminal: send a signed webhook and print the task it runs.
demo: venv
	$(BIN)/python example_project/demo/trigger.py

## Run the whole suite the way CI does: lint, migrations, tests on embedded and real services,
## docs and packaging. The environments run side by side (most of a test run is waiting on
## subprocesses and sockets); a failing one prints its whole output at the end.
TOX_PARALLEL ?= all
test: venv
	$(BIN)/tox run-parallel --parallel $(TOX_PARALLEL) --parallel-no-spinner -e $(TOX_ENVS)

lint: venv
	$(BIN)/tox run -e lint

format: venv
	$(BIN)/tox exec -e lint -- ruff format .
	$(BIN)/tox exec -e lint -- ruff check --fix .

docs: venv
	$(BIN)/tox run -e docs

clean:
	rm -rf $(VENV) .tox var dist site
