# The two commands of the quick start: `make run` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
SAMPLE ?= sample/sample.svs
OUT ?= out
PYTEST_ARGS ?= -n 2

.PHONY: run test lint bench venv clean

$(PY):
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { tools/install-system-deps python && $(PYTHON) -m venv $(VENV); }

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	@mkdir -p $(dir $(SAMPLE))
	@[ -f $(SAMPLE) ] || $(EDGE) synth -o $(SAMPLE) --size 8192x6144
	$(EDGE) convert $(SAMPLE) -o $(OUT) --analyse
	@echo
	@echo "DICOM WSI written to $(OUT)/$(notdir $(basename $(SAMPLE)))/ (one file per level, plus label/overview/thumbnail)."
	@echo "Look at it:"
	@echo "  $(PY) -c \"import openslide; s = openslide.OpenSlide('$(OUT)/$(notdir $(basename $(SAMPLE)))/level-00.dcm'); print(s.level_dimensions); s.get_thumbnail((800, 800)).save('thumbnail.png')\""
	@echo "  dciodvfy -new $(OUT)/$(notdir $(basename $(SAMPLE)))/level-00.dcm   # validator, Debian package dicom3tools"
	@echo "Convert your own slides: $(EDGE) convert SLIDE... -o $(OUT)"

test: $(STAMP)
	@tools/install-system-deps test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check edge tests tools
	$(VENV)/bin/ruff format --check edge tests
	$(VENV)/bin/mypy

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	@touch $@

bench: $(BENCH_STAMP)
	@tools/install-system-deps bench
	$(PY) tools/bench convert

clean:
	rm -rf $(VENV) $(OUT) sample .pytest_cache .mypy_cache .ruff_cache
