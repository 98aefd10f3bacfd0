# Each target sets up what it needs in .venv/ at the repository root.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PIP     := $(VPY) -m pip install --disable-pip-version-check -q -c constraints.txt
JOBS    ?= 2

.PHONY: install test test-deep demo docs bench gpu-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) --upgrade pip setuptools wheel
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VPY) -m pytest -n $(JOBS) -q tests

# Nightly-style: the randomized hypothesis profile (300 fresh cases per property, new ones each run);
# a failure prints the seed blob that reproduces it.
test-deep: $(STAMP)
	env -u CI HYPOTHESIS_PROFILE=deep $(VPY) -m pytest -n $(JOBS) -q -p no:cacheprovider tests

demo: $(STAMP)
	$(VPY) -m injcert demo --out demo_out

clean:
	rm -rf $(VENV) docs/_build .asv demo_out

docs: $(STAMP)
	rm -rf docs/_build/html
	$(VPY) -m sphinx -W --keep-going -b html -q docs docs/_build/html
	! grep -rIl -E "cdn\.|cdnjs|jsdelivr|unpkg" docs/_build/html
	@echo "docs: docs/_build/html/index.html"

# asv, offline: the venv's own python is the "existing" environment; HOME points at a scratch
# folder for asv's machine file; --set-commit-hash makes asv save results of an existing env.
# The table is printed even when a benchmark failed; the target still fails then (asv's status).
ASV_ENV := HOME=$(CURDIR)/.asv/home PYTHONPATH=$(CURDIR)
bench: $(STAMP)
	mkdir -p .asv/home
	$(ASV_ENV) $(VPY) -m asv machine --yes
	$(ASV_ENV) $(VPY) -m asv run --quick --show-stderr -E existing:$(abspath $(VPY)) \
		--set-commit-hash $$(git rev-parse HEAD); rc=$$?; \
		$(VPY) benchmarks/results_table.py && exit $$rc

gpu-check: $(STAMP)
	PYTHONPATH=$(CURDIR) VPY=$(VPY) bash scripts/gpu_check.sh
