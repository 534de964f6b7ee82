# make test: set up .venv if missing, run pytest (library) and nbval (notebooks).
# make demo: the main job, offline.
# make lab:  JupyterLab on notebooks/, on 127.0.0.1 only; prints the URL to open.
# make test-browser: notebook 07's explorer in JupyterLab and headless Chromium (needs chromium, chromium-driver).
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
LAB_PORT ?= 8888
# Jupyter refuses to run as root unless told; containers often run as root
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: test test-lib test-notebooks test-browser demo venv bench lab

venv: $(VENV_STAMP)

# The exact torch / torchvision the workbench is tested with are pinned here only;
# pyproject.toml gives lower bounds so `pip install -e .` keeps an environment's own torch.
$(VENV_STAMP): pyproject.toml
	@echo "==> [1/4] .venv: creating it with python3 -m venv (skipped if it exists)"
	test -x $(PY) || python3 -m venv .venv
	@echo "==> [2/4] .venv: upgrading pip"
	$(PY) -m pip install --upgrade pip
	@echo "==> [3/4] .venv: torch==2.14.1 torchvision==0.29.1 (the first download is large; pip shows its progress)"
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1
	@echo "==> [4/4] .venv: fgcam_lib in editable mode with its dev and lab extras (pytest, nbval, JupyterLab, ...)"
	$(PY) -m pip install -e ".[dev,lab]"
	@echo "==> .venv: lxt==2.1 without its dependencies (the transformer oracle test needs only its torch code)"
	$(PY) -m pip install --no-deps "lxt==2.1"
	touch $(VENV_STAMP)
	@echo "==> .venv ready: $(PY); the command line is .venv/bin/fgcam"

test: venv
	MPLBACKEND=agg FGCAM_QUICK=1 $(PY) -m pytest -q tests $(wildcard notebooks/*.ipynb) $(if $(wildcard notebooks/*.ipynb),--nbval-lax,)

test-lib: venv
	MPLBACKEND=agg $(PY) -m pytest -q tests

# JupyterLab on a free loopback port + headless Chromium; about 2-3 minutes on 2 cores
test-browser: venv
	FGCAM_BROWSER=1 MPLBACKEND=agg FGCAM_QUICK=1 $(PY) -m pytest -q -rs -s -m browser tests/browser

demo: venv
	MPLBACKEND=agg $(PY) -m fgcam_lib.ui.demo

bench: venv
	$(PY) benchmarks/bench_explain.py

lab: venv
	@echo "==> JupyterLab on notebooks/ at http://127.0.0.1:$(LAB_PORT)/lab (the URL with its token is printed below; Ctrl-C stops it)"
	$(PY) -m jupyter lab --ServerApp.root_dir=notebooks --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.open_browser=$(if $(LAB_BROWSER),True,False) $(LAB_ROOT)
