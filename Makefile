# denoise-lightning: the two set-up commands are `make train` and `make test` (both install on first use).
PYTHON ?= python3
# torch is installed before the package so pip never resolves it to another build.
# Here torch==2.13.0 is a local CPU wheel. Elsewhere pick the wheel index for your hardware, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu      (CPU only, small)
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu124    (NVIDIA GPU)
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= baselines,dev
STAMP := .make/installed
# Benchmark data root: $DNL_DATA_DIR, else ../shared/data when present (this project's CI), else ./data.
DNL_DATA_DIR ?= $(if $(wildcard ../shared/data/test),$(abspath ../shared/data),$(abspath data))
export DNL_DATA_DIR

# `make sweep`: the paper grid (experiment=paper_grid*: noise type x blind x edge weight, 18 jobs) as one multirun.
# SWEEP_BUDGET=smoke (embedded photos, 36 steps per job: minutes on a CPU) or full (Train400 -> BSD68 + Set12);
# SWEEP_LAUNCHER=ray_local (this machine: one GPU per job, or DNL_CPUS_PER_JOB cores), ray_cluster or slurm.
SWEEP_BUDGET ?= smoke
SWEEP_LAUNCHER ?= ray_local
SWEEP_EXPERIMENT = $(or $(SWEEP_EXPERIMENT_$(SWEEP_BUDGET)),$(error SWEEP_BUDGET must be smoke or full, not "$(SWEEP_BUDGET)"))
SWEEP_EXPERIMENT_smoke := paper_grid_smoke
SWEEP_EXPERIMENT_full := paper_grid
NOTEBOOKS := notebooks/results.ipynb

.PHONY: install train test test-slow test-all data bench lint clean sweep notebook-check notebook-clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install -e '.[$(EXTRAS)]'
	@mkdir -p $(dir $@) && touch $@

## train the default experiment on the embedded images (ARGS="..." for Hydra overrides)
train: $(STAMP)
	$(PYTHON) -m denoise_lightning.training.train $(ARGS)

## the fast test suite (no slow tests)
test: $(STAMP)
	$(PYTHON) -m pytest -q $(ARGS)

## minutes-long tests on the real benchmark data
test-slow: $(STAMP)
	$(PYTHON) -m pytest -q -m slow $(ARGS)

test-all: $(STAMP)
	$(PYTHON) -m pytest -q -m "slow or not slow" $(ARGS)

## download Train400, BSD68 and Set12 into $(DNL_DATA_DIR) (checksummed, resumable, idempotent)
data: $(STAMP)
	$(PYTHON) -m denoise_lightning.datasets.download --root $(DNL_DATA_DIR)

## timings (never pass/fail; ~10 min on 2 quiet cores): bench/results.json + bench/results.md (ARGS="--no-compile" ...)
bench: $(STAMP)
	$(PYTHON) -m benchmarks.bench --out bench $(ARGS)

## the paper grid as one Hydra multirun -> multirun/paper_grid*/<time>/{results.csv,sweep_summary.md} (ARGS="...")
sweep: $(STAMP)
	$(PYTHON) -m denoise_lightning.training.train -m experiment=$(SWEEP_EXPERIMENT) hydra/launcher=$(SWEEP_LAUNCHER) $(ARGS)

## fail if a notebook holds outputs (notebooks are committed without them); notebook-clean strips them
notebook-check: $(STAMP)
	$(PYTHON) -m nbstripout --verify $(NOTEBOOKS)

notebook-clean: $(STAMP)
	$(PYTHON) -m nbstripout $(NOTEBOOKS)

lint: $(STAMP) notebook-check
	$(PYTHON) -m ruff check denoise_lightning tests benchmarks

clean:
	rm -rf .make outputs multirun .pytest_cache
