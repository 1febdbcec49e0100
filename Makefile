# Fresh machine: `make demo` runs the pipeline end to end, `make test` runs the tests.
PY      ?= python3
VENV    := .venv
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0
DEMO    := demo-output

.PHONY: setup demo test bench clean

setup: $(STAMP)
	@command -v ffprobe >/dev/null || { echo "installing Debian ffmpeg (ffmpeg + ffprobe)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; }

# Re-run pip only when the dependency list changes; torch goes first so that the
# pinned CPU wheel satisfies the range in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/t2v demo --out $(DEMO)

test: setup
	$(VENV)/bin/python -m pytest -q

bench: setup
	$(VENV)/bin/python bench/frames.py

clean:
	rm -rf $(DEMO) bench-output .pytest_cache
