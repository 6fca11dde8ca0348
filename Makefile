# The workbook's commands. A fresh machine needs only python3 and make:
#   make lab    set everything up and open JupyterLab on chapters/
#   make test   set everything up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and notebooks run offline and record progress in a scratch file, never the learner's.
TEST_ENV := HF_HUB_OFFLINE=1 WORKBOOK_PROGRESS=$(CURDIR)/$(VENV)/test-progress.json

.PHONY: install lab test build check-build bench organism evaluate clean

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (workbook)" > /dev/null
	@touch $(STAMP)

install: $(STAMP)

lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir=chapters

test: install
	$(TEST_ENV) $(BIN)/python -m pytest -n 2 --dist loadfile tests chapters solutions --nbval-lax

build: install
	$(BIN)/python -m utils.build

check-build: install
	$(BIN)/python -m utils.build --check

bench: install
	$(TEST_ENV) $(BIN)/python -m utils.bench

organism: install
	$(BIN)/python -m utils.organism.train
	$(BIN)/python -m utils.organism.evaluate

evaluate: install
	$(BIN)/python -m utils.organism.evaluate

clean:
	rm -rf $(VENV) book/_build bench
