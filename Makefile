# Two entry points on a fresh machine: `make demo` (set up + run the main job) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= outputs/demo

.PHONY: setup demo test test-slow lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from the CPU build that lies on disk: an unpinned install would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	@# open3d's wheel links libusb-1.0, which minimal Debian images lack.
	@ldconfig -p | grep -q libusb-1.0 || (apt-get install -y -q libusb-1.0-0 || \
		(apt-get update -q && apt-get install -y -q libusb-1.0-0)) >/dev/null || \
		echo "warning: libusb-1.0 is missing and could not be installed; open3d (physics.pointcloud) will not import"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/wmgen demo --out $(OUT)

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) outputs .pytest_cache
