# The two commands: `make demo` and `make test`. Both bootstrap this machine first
# (apt packages, CRIU >= 4.2 from Debian's source package, wireguard-go, kernel settings,
# the virtual environment); a second run finds everything done and says so.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all bootstrap test demo vendor-exit bench faults clean

all: test

bootstrap:
	@bash cloudmig/bootstrap-host --venv $(VENV) --project $(CURDIR) --test-tools

test: bootstrap
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: bootstrap
	@PATH=$(VENV)/bin:$$PATH bash examples/demo.sh

# leave azure for aws with a live database, on the simulated clouds (cloudsim/)
vendor-exit: bootstrap
	@PATH=$(VENV)/bin:$$PATH bash examples/vendor-exit/run.sh

# every fault crossed with every phase of both modes (~2 h; `make test` runs a slice), then
# docs/faults.md from the results
FAULT_RESULTS ?= $(CURDIR)/.fault-results.jsonl
faults: bootstrap
	rm -f $(FAULT_RESULTS)
	-CLOUDMIG_FAULT_MATRIX=full CLOUDMIG_FAULT_RESULTS=$(FAULT_RESULTS) $(VENV)/bin/pytest tests/test_fault_matrix.py $(PYTEST_ARGS)
	$(PY) tests/fault_matrix.py $(FAULT_RESULTS) docs/faults.md

clean:
	rm -rf $(VENV) .pytest_cache
