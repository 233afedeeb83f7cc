# treewatch's commands. `make demo` and `make test` are all a newcomer needs: both run setup.
# setup installs into the project's virtualenv; everything runs from it.
PYTHON ?= .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo generate check-generated lint bench soak setup-python check-rules rules-diff

setup:
	@scripts/setup.sh

# The virtualenv and promtool/amtool only: what check-rules needs (CI's rules job), no Java or Kafka jars.
setup-python:
	@WITHOUT_KAFKA=1 scripts/setup.sh

# Everything CI checks: lint, generated artifacts up to date, the whole test suite.
test: setup lint check-generated
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PYTHON) -m treewatch demo

# The rules, Alertmanager files and dashboards through the code path of `treewatch generate` (the defaults).
generate:
	$(PYTHON) -m treewatch generate
	$(PYTHON) -m exporter.docs
	$(PYTHON) -m treewatch.config_schema

# Regenerates into the work tree and fails when that changed a committed file.
check-generated: setup
	@$(MAKE) -s generate
	@git diff --exit-code --stat -- alerts dashboards docs deploy pipeline/config.schema.json \
	  || (echo "generated files are out of date: run 'make generate' and commit" >&2; exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- alerts dashboards docs deploy pipeline/config.schema.json)" \
	  || (git status --short -- alerts dashboards docs deploy pipeline/config.schema.json >&2; echo "generated files are not committed" >&2; exit 1)

# What a rule, routing or dashboard change needs, in seconds and without Kafka or any server. The generated
# files are regenerated into a scratch folder and compared with the work tree's (which is left untouched, so
# it works under pre-commit's stash too), promtool and amtool check them, then the tests that start no server:
# promtool's unit tests, routes per severity, the Slack template, dashboards' structure and metric names.
# .github/workflows/rules.yml and .pre-commit-config.yaml run exactly this target.
PROMTOOL ?= promtool
AMTOOL ?= amtool
RULES_TESTS = tests/test_alert_rules.py tests/test_alertmanager.py tests/test_dashboards.py
check-rules: setup-python
	@scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT \
	  && $(PYTHON) -m alerts.generate --out "$$scratch/alerts" >/dev/null \
	  && $(PYTHON) -m dashboards.generate --output-dir "$$scratch/dashboards" >/dev/null \
	  && for file in $$(cd "$$scratch" && ls alerts/* dashboards/*); do \
	       diff -u "$${file%%/*}/generated/$${file#*/}" "$$scratch/$$file" \
	       || { echo "$${file%%/*}/generated/$${file#*/} is out of date: run 'make generate' and commit" >&2; exit 1; }; \
	     done
	$(PROMTOOL) check rules alerts/generated/treewatch-rules.yml
	$(PROMTOOL) test rules alerts/tests/*.yml
	$(AMTOOL) check-config alerts/generated/alertmanager.yml
	$(PYTHON) -m pytest -q -p tests.without_servers $(RULES_TESTS)

# The rule and routing changes from BASE to HEAD (git refs, rule files or folders) as Markdown, for a pull
# request's summary. Differences are what it reports, not a failure: only a bad input (exit 2) fails.
BASE ?= origin/main
HEAD ?= HEAD
rules-diff:
	@$(PYTHON) -m treewatch rules diff $(BASE) $(HEAD) || test $$? -eq 1

lint: setup
	$(PYTHON) -m ruff check .

bench: setup
	$(PYTHON) -m bench

# Random production faults against the exporter for MINUTES minutes, its invariants watched.
MINUTES ?= 30
soak: setup
	$(PYTHON) -m bench.soak --minutes $(MINUTES)
