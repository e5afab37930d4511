# denoise-lightning: the two set-up commands are `make train` and `make test` (both install on first use).

# Where it installs and runs: the active virtualenv ($VIRTUAL_ENV), else the interpreter given as PYTHON=..., else
# the project's own .venv, created on first use (`make distclean` removes it).
VENV := .venv
BOOTSTRAP_PYTHON ?= python3
ifneq ($(VIRTUAL_ENV),)
PYTHON ?= $(VIRTUAL_ENV)/bin/python
else
PYTHON ?= $(VENV)/bin/python
endif
PIP := $(PYTHON) -m pip
# That environment's bin/ first on PATH: recipes and tests find its console scripts (dnl-train) unactivated.
PYTHON_BIN := $(if $(findstring /,$(PYTHON)),$(abspath $(dir $(PYTHON))))
export PATH := $(if $(PYTHON_BIN),$(PYTHON_BIN):)$(PATH)
# Install stamps, one folder per environment; a venv's pyvenv.cfg is rewritten when the venv is (re)created, so a new
# environment is installed anew.
STAMPS := .make/$(subst /,_,$(abspath $(PYTHON)))
ENV_CONFIG := $(if $(filter $(VENV)/bin/python,$(PYTHON)),$(VENV)/pyvenv.cfg,$(wildcard $(PYTHON_BIN)/../pyvenv.cfg))

# torch is installed before the package so pip never resolves it to another build.
# Here torch==2.13.0 is a local CPU wheel. Elsewhere pick the wheel index for your hardware, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu      (CPU only, small)
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu124    (NVIDIA GPU)
# A TORCH_SPEC other than the lock's torch needs `make lock` first.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Every other version is pinned by the lock, given to pip as a *constraints* file (-c): it fixes the version of what
# gets installed and installs nothing itself, so a CPU torch wheel keeps its own (absent) CUDA dependencies.
# The lock is for CPython 3.11 on Linux x86_64; elsewhere `make install LOCK=` installs without it.
LOCK_FILE := requirements/lock.txt
LOCK ?= $(LOCK_FILE)
CONSTRAINTS := $(if $(LOCK),-c $(LOCK))
# install: the dependencies + baselines (bm3d: free for non-commercial use only, see its licence);
# install-dev: + dev (pytest, ruff, the sweep launchers, the notebook and ONNX export tools).
EXTRAS ?= baselines
DEV_EXTRAS ?= $(EXTRAS),dev
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

.PHONY: install install-dev lock train test test-slow test-all data bench lint clean distclean sweep \
	notebook-check notebook-clean

## the package + baselines, pinned by the lock (into .venv unless a virtualenv is active or PYTHON=... is given)
install: $(STAMPS)/install

## install + the test, sweep, notebook and export tools
install-dev: $(STAMPS)/install-dev

$(VENV)/pyvenv.cfg:
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

# torch from TORCH_INDEX comes alone; from PyPI (the default) its dependencies are pinned by the lock at once.
$(STAMPS)/install: pyproject.toml $(LOCK) $(ENV_CONFIG)
	$(PIP) install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),$(CONSTRAINTS))
	$(PIP) install $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	@mkdir -p $(@D) && touch $@

$(STAMPS)/install-dev: $(STAMPS)/install
	$(PIP) install $(CONSTRAINTS) -e '.[$(DEV_EXTRAS)]'
	@mkdir -p $(@D) && touch $@

# `make lock`: re-resolve requirements/lock.txt with uv for the dependencies + every extra, TORCH_SPEC, CPython 3.11
# on Linux x86_64, keeping the current pins that still fit (LOCK_ARGS=--upgrade moves all to the newest releases).
# torch's CUDA runtime (nvidia-*, cuda-*, triton) stays out of the lock: which one is needed depends on the torch
# build (none for the CPU wheel, its own CUDA libraries for each wheel of TORCH_INDEX), pip brings it with torch,
# and pinned here it would tie every install to the one CUDA build of torch on PyPI. A first pass names those
# packages for uv's --no-emit-package.
UV_SPEC ?= uv==0.13.9
LOCK_RESOLVE = echo '$(TORCH_SPEC)' | $(PYTHON) -m uv pip compile --quiet pyproject.toml - --all-extras \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28
lock: $(ENV_CONFIG)
	$(PIP) install '$(UV_SPEC)'
	@mkdir -p $(dir $(LOCK_FILE))
	cuda_only=$$($(LOCK_RESOLVE) --no-header --no-annotate \
		| sed -n -E 's/^(nvidia-[^=]+|cuda-[^=]+|triton)==.*/--no-emit-package \1/p'); \
	$(LOCK_RESOLVE) $$cuda_only --custom-compile-command 'make lock' $(LOCK_ARGS) -o $(LOCK_FILE)
	{ echo '# Pinned versions of `make install` / `make install-dev` for CPython 3.11 on Linux x86_64, given to pip as a'; \
	  echo '# constraints file (pip install -c $(LOCK_FILE) ...). Regenerate with `make lock`; the Makefile says why'; \
	  echo "# torch's CUDA runtime packages are left out."; cat $(LOCK_FILE); } > $(LOCK_FILE).tmp
	mv $(LOCK_FILE).tmp $(LOCK_FILE)

## train a DN-ResNet by cascade (3 -> 13 layers) on the embedded photos (ARGS="..." for Hydra overrides)
train: $(STAMPS)/install
	$(PYTHON) -m denoise_lightning.training.train experiment=embedded_dn_resnet_cascade $(ARGS)

## the fast test suite (no slow tests)
test: $(STAMPS)/install-dev
	$(PYTHON) -m pytest -q $(ARGS)

## minutes-long tests on the real benchmark data
test-slow: $(STAMPS)/install-dev
	$(PYTHON) -m pytest -q -m slow $(ARGS)

test-all: $(STAMPS)/install-dev
	$(PYTHON) -m pytest -q -m "slow or not slow" $(ARGS)

## download Train400, BSD68 and Set12 into $(DNL_DATA_DIR) (checksummed, resumable, idempotent)
data: $(STAMPS)/install
	$(PYTHON) -m denoise_lightning.datasets.download --root $(DNL_DATA_DIR)

## timings (never pass/fail; ~10 min on 2 quiet cores): bench/results.json + bench/results.md (ARGS="--no-compile" ...)
bench: $(STAMPS)/install-dev
	$(PYTHON) -m benchmarks.bench --out bench $(ARGS)

## the paper grid as one Hydra multirun -> multirun/paper_grid*/<time>/{results.csv,sweep_summary.md} (ARGS="...")
sweep: $(STAMPS)/install-dev
	$(PYTHON) -m denoise_lightning.training.train -m experiment=$(SWEEP_EXPERIMENT) hydra/launcher=$(SWEEP_LAUNCHER) $(ARGS)

# `make reproduce`: the paper's claims grid (experiment=reproduce*: 9 arms x 3 seeds = 27 jobs) as one multirun, then
# the claims report (`dnl-collect SWEEP --claims`: each claim's arms over seeds, difference, verdict -> claims.md).
# REPRODUCE_BUDGET=smoke (embedded photos, ~10 minutes on 2 CPU cores: checks the protocol, resolves no claim) or full
# (Train400 -> BSD68 + Set12, a GPU job); REPRODUCE_LAUNCHER as SWEEP_LAUNCHER. The report is written also when a job
# failed (the make target then fails).
REPRODUCE_BUDGET ?= smoke
REPRODUCE_LAUNCHER ?= ray_local
REPRODUCE_EXPERIMENT = $(or $(REPRODUCE_EXPERIMENT_$(REPRODUCE_BUDGET)),$(error REPRODUCE_BUDGET must be smoke or full, not "$(REPRODUCE_BUDGET)"))
REPRODUCE_EXPERIMENT_smoke := reproduce_smoke
REPRODUCE_EXPERIMENT_full := reproduce
REPRODUCE_TIME := $(shell date +%Y-%m-%d_%H-%M-%S)
REPRODUCE_DIR ?= multirun/$(REPRODUCE_EXPERIMENT)/$(REPRODUCE_TIME)

.PHONY: reproduce
## the claims grid as one multirun + the claims report -> $(REPRODUCE_DIR)/claims.md (ARGS="..." for Hydra overrides)
reproduce: $(STAMPS)/install-dev
	$(PYTHON) -m denoise_lightning.training.train -m experiment=$(REPRODUCE_EXPERIMENT) \
		hydra/launcher=$(REPRODUCE_LAUNCHER) hydra.sweep.dir=$(REPRODUCE_DIR) $(ARGS); status=$$?; \
	$(PYTHON) -m denoise_lightning.sweeps.collect $(REPRODUCE_DIR) --claims && exit $$status

# `make zoo`: the model zoo. Phase 1: the DN-ResNet-13 parents (one per noise) as one multirun; phase 2: the DS-DN-ResNets
# by incremental evolution from their finished parents; phase 3: python -m denoise_lightning.zoo.build measures every
# model with dnl-eval in fp32 on BSD68 + Set12 next to DnCNN-S / DnCNN-B and BM3D / VST-BM3D, and writes the weights
# and model cards into the package (ZOO_INSTALL) and the table docs/zoo.md.
# ZOO_BUDGET=gpu (default: sized for about 10 minutes of one H100-class GPU, ZOO_GPUS_PER_JOB of it per job), cpu
# (about 10 minutes per job and core) or smoke (checks the pipeline); ZOO_LAUNCHER as SWEEP_LAUNCHER.
ZOO_BUDGET ?= gpu
ZOO_LAUNCHER ?= ray_local
ZOO_GPUS_PER_JOB ?= 0.125
ZOO_EXPERIMENT = $(or $(ZOO_EXPERIMENT_$(ZOO_BUDGET)),\
	$(error ZOO_BUDGET must be gpu, cpu or smoke, not "$(ZOO_BUDGET)"))
ZOO_EXPERIMENT_gpu := zoo
ZOO_EXPERIMENT_cpu := zoo_cpu
ZOO_EXPERIMENT_smoke := zoo_smoke
ZOO_DIR ?= multirun/$(ZOO_EXPERIMENT)/$(REPRODUCE_TIME)
ZOO_INSTALL ?= denoise_lightning/zoo/models
ZOO_DOCS ?= docs/zoo.md
ZOO_PARENTS := dn_resnet13_sigma15,dn_resnet13_sigma25,dn_resnet13_sigma50,dn_resnet13_blind
ZOO_PARENTS := $(ZOO_PARENTS),dn_resnet13_poisson_blind,dn_resnet13_pg_blind
ZOO_EVOLVED := ds_dn_resnet_sigma25,ds_dn_resnet_blind
ZOO_TRAIN = DNL_GPUS_PER_JOB=$(ZOO_GPUS_PER_JOB) $(PYTHON) -m denoise_lightning.training.train -m \
	experiment=$(ZOO_EXPERIMENT) hydra/launcher=$(ZOO_LAUNCHER)

.PHONY: zoo
## train the model zoo, measure it and write its weights + cards (ZOO_BUDGET=gpu|cpu|smoke, ARGS="..." for Hydra)
zoo: $(STAMPS)/install-dev
	$(ZOO_TRAIN) +experiment/zoo_models=$(ZOO_PARENTS) hydra.sweep.dir=$(ZOO_DIR)/parents $(ARGS)
	$(ZOO_TRAIN) +experiment/zoo_models=$(ZOO_EVOLVED) zoo.parents_dir=$(abspath $(ZOO_DIR))/parents \
		hydra.sweep.dir=$(ZOO_DIR)/evolved $(ARGS)
	$(PYTHON) -m denoise_lightning.zoo.build $(ZOO_DIR) --install $(ZOO_INSTALL) --docs $(ZOO_DOCS) \
		--command "make zoo ZOO_BUDGET=$(ZOO_BUDGET) ZOO_GPUS_PER_JOB=$(ZOO_GPUS_PER_JOB)$(if $(ARGS), ARGS='$(ARGS)')"

.PHONY: zoo-bench
## how many zoo jobs to pack on one GPU: steps/s per job and in total with 1, 4, 8, 16 jobs -> zoo-throughput/
zoo-bench: $(STAMPS)/install-dev
	$(PYTHON) benchmarks/zoo_throughput.py --out zoo-throughput $(ARGS)

## fail if a notebook holds outputs (notebooks are committed without them); notebook-clean strips them
notebook-check: $(STAMPS)/install-dev
	$(PYTHON) -m nbstripout --verify $(NOTEBOOKS)

notebook-clean: $(STAMPS)/install-dev
	$(PYTHON) -m nbstripout $(NOTEBOOKS)

lint: $(STAMPS)/install-dev notebook-check
	$(PYTHON) -m ruff check denoise_lightning tests benchmarks

# clean keeps the environment; distclean removes it too (and the CI's)
clean:
	rm -rf .make outputs multirun .pytest_cache

distclean: clean
	rm -rf $(VENV) .ci-venv
