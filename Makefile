# Two commands on a fresh machine: `make demo` and `make test`. Each makes .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# transformers 4.57 is what optimum-onnx accepts; the newest 5.x is what `pip install` takes.
TRANSFORMERS_COMPAT := 4.57.6

.PHONY: demo test test-runtime test-compat ci lint clean

# The dev venv: every extra, the package editable. Rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python tools/tiny_demo.py --out demo-out

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# The plain install (`pip install .`, no extras) is the torch-free runtime: prove it stays so, and
# that it captions a bundle exported by the dev venv (the demo's).
test-runtime: $(VENV)/.installed
	rm -rf .venv-runtime
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/python -m pip install --quiet --upgrade pip
	.venv-runtime/bin/python -m pip install --quiet . pytest
	! .venv-runtime/bin/python -c "import torch" 2>/dev/null
	cd /tmp && $(CURDIR)/.venv-runtime/bin/clipcap --help > /dev/null
	cd /tmp && $(CURDIR)/.venv-runtime/bin/python -c "import clipcap.runtime, sys; assert 'torch' not in sys.modules"
	cd /tmp && $(CURDIR)/.venv-runtime/bin/python -c "from clipcap.runtime import load_tokenizer; \
	    assert load_tokenizer().encode('A dog.').ids == [32, 3290, 13]"
	$(BIN)/python tools/tiny_demo.py --out build/demo > build-demo.log 2>&1 || (cat build-demo.log; exit 1)
	cd /tmp && $(CURDIR)/.venv-runtime/bin/clipcap caption $(CURDIR)/build/demo/sample.png \
	    --bundle $(CURDIR)/build/demo/bundle-fp32 --max-new-tokens 12 --json
	.venv-runtime/bin/python -m pytest -q

# The oldest transformers we support, for the model and export tests.
test-compat:
	test -x .venv-compat/bin/python || $(PYTHON) -m venv .venv-compat
	.venv-compat/bin/python -m pip install --quiet --upgrade pip
	.venv-compat/bin/python -m pip install --quiet -e '.[dev]' 'transformers==$(TRANSFORMERS_COMPAT)'
	.venv-compat/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_COMPAT)'"
	.venv-compat/bin/python -m pytest -q -m "not slow"

ci: test test-runtime test-compat

clean:
	rm -rf .venv .venv-runtime .venv-compat demo-out build build-demo.log *.egg-info
