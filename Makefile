# Fresh machine: `make demo` runs the pipeline end to end, `make test` runs the tests.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
DEMO    := demo-output

.PHONY: setup browser demo test bench clean cluster-up cluster-down

# apt's ffmpeg installs while pip works (each mostly waits on one core or the network), so a
# fresh machine's set-up costs the longer of the two, not their sum.
setup:
	@{ command -v ffprobe >/dev/null || { echo "installing Debian ffmpeg (ffmpeg + ffprobe)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; }; } & apt=$$!; \
	 $(MAKE) --no-print-directory $(STAMP); pip=$$?; wait $$apt; ffmpeg=$$?; \
	 test $$pip = 0 || exit $$pip; test $$ffmpeg = 0 || { echo "installing ffmpeg failed" >&2; exit $$ffmpeg; }

# Only the tests need a browser (the MLflow UI test); `make demo` does not wait for it.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian chromium + chromium-driver (the browser test of the MLflow UI)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Re-run pip only when the dependency list changes; torch goes first so that the
# pinned CPU wheel satisfies the range in pyproject.toml. fastText comes only as source: its
# C++ build (about a minute on one core) runs beside the install of everything else, and the
# editable install then takes the wheel it made.
# REQS writes the requirement lists: fastText's, and everything else's.
REQS = $(VENV)/bin/python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
  reqs = p["dependencies"] + p["optional-dependencies"]["test"]; \
  open("$(VENV)/req-fasttext.txt", "w").write("\n".join(r for r in reqs if r.startswith("fasttext"))); \
  open("$(VENV)/req-rest.txt", "w").write("\n".join(r for r in reqs if not r.startswith("fasttext")))'
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	mkdir -p $(VENV)/wheels
	@# Python 3.10 has no tomllib: there the last line installs fastText too, one package after another.
	@if $(REQS) 2>/dev/null; then \
	  echo "building fastText beside the install of the rest (log: $(VENV)/fasttext.log)"; \
	  $(VENV)/bin/pip wheel -q --no-deps -w $(VENV)/wheels -r $(VENV)/req-fasttext.txt >$(VENV)/fasttext.log 2>&1 & ft=$$!; \
	  $(VENV)/bin/pip install -q -r $(VENV)/req-rest.txt; rest=$$?; \
	  wait $$ft || { cat $(VENV)/fasttext.log >&2; exit 1; }; exit $$rest; fi
	$(VENV)/bin/pip install -q --find-links $(VENV)/wheels -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/t2v demo --out $(DEMO)

# The integration tests need the project's own two-node SLURM cluster: bring it up,
# run everything, and take it down again whatever the tests did.
CLUSTER := containers/slurm-local/cluster.sh
test: setup browser
	@if out=$$($(CLUSTER) up); then eval "$$(echo "$$out" | tail -n 1)"; \
	 else export T2V_NO_SLURM="containers/slurm-local/cluster.sh up failed; see its output above"; fi; \
	 $(VENV)/bin/python -m pytest -q --durations=15; rc=$$?; $(CLUSTER) down >/dev/null 2>&1 || true; exit $$rc

bench: setup
	$(VENV)/bin/python bench/frames.py

clean:
	rm -rf $(DEMO) bench-output .pytest_cache

cluster-up:
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down
