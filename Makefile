# The two commands of the quick start: `make run` and `make test`. Each creates .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EDGE := $(VENV)/bin/edge
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
SAMPLE ?= sample/sample.svs
OUT ?= out
EDGE_HOME ?= edge-data
RUN_ARGS ?=
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
	@mkdir -p $(dir $(SAMPLE)) $(EDGE_HOME)/inbox
	@[ -f $(SAMPLE) ] || $(EDGE) synth -o $(SAMPLE) --size 8192x6144
	@[ -e $(EDGE_HOME)/inbox/$(notdir $(SAMPLE)) ] || cp $(SAMPLE) $(EDGE_HOME)/inbox/
	@echo "The appliance runs on embedded defaults (no /etc/edge/edge.toml): it watches"
	@echo "  $(EDGE_HOME)/inbox/     (the sample slide is there; drop more SVS/NDPI/TIFF/DICOM in)"
	@echo "and converts, analyses and sends each slide to the folder destination"
	@echo "  $(EDGE_HOME)/outgoing/  (state database, converted slides and QC in $(EDGE_HOME)/state/)."
	@echo "Dashboard: http://127.0.0.1:8080 (viewing open on this machine; for actions add a user:"
	@echo "  $(EDGE) web adduser NAME --role admin --config ...  or see docs/dashboard.md)"
	@echo "Slides and verdicts: $(EDGE) jobs --home $(EDGE_HOME) list    Stop: Ctrl-C"
	$(EDGE) run --home $(EDGE_HOME) $(RUN_ARGS)

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
	rm -rf $(VENV) $(OUT) $(EDGE_HOME) sample .pytest_cache .mypy_cache .ruff_cache
