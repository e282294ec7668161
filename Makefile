# The two commands: `make demo` and `make test`. Both bootstrap this machine first
# (apt packages, CRIU >= 4.2 from Debian's source package, wireguard-go, kernel settings,
# the virtual environment); a second run finds everything done and says so.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: all bootstrap test demo bench clean

all: test

bootstrap:
	@bash cloudmig/bootstrap-host --venv $(VENV) --project $(CURDIR) --test-tools

test: bootstrap
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: bootstrap
	@PATH=$(VENV)/bin:$$PATH bash examples/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache
