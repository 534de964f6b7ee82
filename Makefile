# make test: set up .venv if missing, run pytest (library) and nbval (notebooks).
# make demo: the main job, offline.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: test test-lib test-notebooks demo venv bench

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(VENV_STAMP)

test: venv
	MPLBACKEND=agg FGCAM_QUICK=1 $(PY) -m pytest -q tests $(wildcard notebooks/*.ipynb) $(if $(wildcard notebooks/*.ipynb),--nbval-lax,)

test-lib: venv
	MPLBACKEND=agg $(PY) -m pytest -q tests

demo: venv
	MPLBACKEND=agg $(PY) -m fgcam_lib.ui.demo

bench: venv
	$(PY) benchmarks/bench_explain.py
