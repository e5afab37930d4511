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

.PHONY: install train test test-slow test-all data bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PYTHON) -m pip install -e '.[$(EXTRAS)]'
	@mkdir -p $(dir $@) && touch $@

## train the default experiment on the embedded images (ARGS="..." for Hydra overrides)
train: $(STAMP)
	$(PYTHON) -m denoise_lightning.train $(ARGS)

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
	$(PYTHON) -m denoise_lightning.download --root $(DNL_DATA_DIR)

## timings (never pass/fail): bench/precision.json
bench: $(STAMP)
	$(PYTHON) benchmarks/precision.py --out bench/precision.json

lint: $(STAMP)
	$(PYTHON) -m ruff check denoise_lightning tests

clean:
	rm -rf .make outputs multirun .pytest_cache
