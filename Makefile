# treewatch's commands. `make demo` and `make test` are all a newcomer needs: both run setup.
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: setup test demo generate check-generated lint bench soak

setup:
	@PYTHON=$(PYTHON) scripts/setup.sh

# Everything CI checks: lint, generated artifacts up to date, the whole test suite.
test: setup lint check-generated
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PYTHON) -m treewatch demo

generate:
	$(PYTHON) -m alerts.generate
	$(PYTHON) -m dashboards.generate
	$(PYTHON) -m exporter.docs

# Regenerates into the work tree and fails when that changed a committed file.
check-generated: setup
	@$(MAKE) -s generate
	@git diff --exit-code --stat -- alerts dashboards docs deploy \
	  || (echo "generated files are out of date: run 'make generate' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- alerts dashboards docs deploy)" \
	  || (git status --short -- alerts dashboards docs deploy >&2; echo "generated files are not committed" >&2; exit 1)

lint: setup
	$(PYTHON) -m ruff check .

bench: setup
	$(PYTHON) -m bench

# Random production faults against the exporter for MINUTES minutes, its invariants watched.
MINUTES ?= 30
soak: setup
	$(PYTHON) -m bench.soak --minutes $(MINUTES)
