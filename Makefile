# Two commands on a fresh machine: `make demo` and `make test`. Each makes .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# transformers 4.57 is what optimum-onnx accepts; the newest 5.x is what `pip install` takes.
TRANSFORMERS_COMPAT := 4.57.6

.PHONY: demo test test-runtime test-compat test-ray ci lint clean bench-venv

# setuptools' editable finder always prints an informational notice ("be careful with folders in
# your working directory with the same name as your package"), whatever the project; only the
# editable builds filter UserWarnings, so everything else setuptools says still shows.
QUIET_BUILD := ignore::UserWarning

# The dev venv: every extra, the package editable. Rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=$(QUIET_BUILD) $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The whole chain offline (194 s on a 2-core Intel Xeon): see `clipcap demo --help`.
demo: $(VENV)/.installed
	$(BIN)/clipcap demo --out demo-out

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

# The plain install (`pip install .`, no extras) is the torch-free runtime: prove it stays so, and
# that it captions with a bundle the dev venv trained and exported (`clipcap demo --quick`, which
# itself checks the whole chain: train, export, caption, score), and that `clipcap serve` serves
# those bundles from the same torch-free install. `clipcap bench --quick` and
# `clipcap bench serve --quick` run here too, so the benchmarks never rot.
test-runtime: $(VENV)/.installed
	rm -rf .venv-runtime build/demo build/bench*
	$(PYTHON) -m venv .venv-runtime
	.venv-runtime/bin/python -m pip install --quiet --upgrade pip
	.venv-runtime/bin/python -m pip install --quiet . pytest hypothesis
	! .venv-runtime/bin/python -c "import torch" 2>/dev/null
	cd /tmp && $(CURDIR)/.venv-runtime/bin/clipcap --help > /dev/null
	cd /tmp && $(CURDIR)/.venv-runtime/bin/python -c "import clipcap.runtime, sys; assert 'torch' not in sys.modules"
	cd /tmp && $(CURDIR)/.venv-runtime/bin/python -c "from clipcap.runtime import load_tokenizer; \
	    assert load_tokenizer().encode('A dog.').ids == [32, 3290, 13]"
	$(BIN)/clipcap demo --quick --out build/demo
	# The demo's own checkpoint re-exports from anywhere: it carries its CLIP's architecture.
	cd /tmp && $(CURDIR)/$(BIN)/clipcap export $(CURDIR)/build/demo/train-mlp -o $(CURDIR)/build/demo/reexport
	$(BIN)/python -c "import json; r = json.load(open('build/demo/report.json')); \
	    assert [v['variant'] for v in r['variants']] == ['mlp', 'transformer'], r; \
	    assert all(v['identical_to_pytorch'] == 1.0 for v in r['variants']), r"
	cd /tmp && $(CURDIR)/.venv-runtime/bin/clipcap caption $(CURDIR)/build/demo/data/images/01100.png \
	    --bundle $(CURDIR)/build/demo/bundle-mlp --json
	# The server on the same torch-free install: the [serve] extra brings no torch either, and
	# both demo bundles served on a real port caption as `clipcap caption` does; SIGTERM exits 0.
	.venv-runtime/bin/python -m pip install --quiet '.[serve]'
	! .venv-runtime/bin/python -c "import torch" 2>/dev/null
	cd /tmp && $(CURDIR)/.venv-runtime/bin/python $(CURDIR)/tools/serve_smoke.py \
	    $(CURDIR)/build/demo/bundle-mlp $(CURDIR)/build/demo/bundle-transformer \
	    --image $(CURDIR)/build/demo/data/images/01100.png --image $(CURDIR)/build/demo/data/images/01101.png
	$(BIN)/clipcap bench --quick --cache build/bench-cache --out build/bench.json \
	    --markdown build/bench.md --plot build/bench.png
	$(BIN)/clipcap bench serve --quick --cache build/bench-cache --out build/bench-serve.json \
	    --markdown build/bench-serve.md --plot build/bench-serve.png
	# From outside the checkout: its clipcap/ folder would shadow the installed package (runtime/,
	# export/ and serve/ join it only through the install), so `python -m` and pytest's sys.path
	# must not see the checkout's root. The tests import in importlib mode (pyproject) for that.
	cd /tmp && $(CURDIR)/.venv-runtime/bin/pytest -q -p no:cacheprovider --rootdir $(CURDIR) \
	    -c $(CURDIR)/pyproject.toml $(CURDIR)/tests

# The oldest transformers we support: the tests whose code paths meet transformers (the models
# against Hugging Face's, CLIP, export, tokenizer, training's GPT-2 loading); the rest does not
# depend on its version.
COMPAT_TESTS := tests/test_gpt2.py tests/test_checkpoints.py tests/test_clip.py tests/test_export.py \
	tests/test_generate.py tests/test_tokenizer.py tests/test_train.py tests/test_pretrain.py \
	tests/test_cli.py tests/test_runtime_preprocess.py tests/test_imports.py
test-compat:
	test -x .venv-compat/bin/python || $(PYTHON) -m venv .venv-compat
	.venv-compat/bin/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=$(QUIET_BUILD) .venv-compat/bin/python -m pip install --quiet -e '.[dev]' 'transformers==$(TRANSFORMERS_COMPAT)'
	.venv-compat/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_COMPAT)'"
	.venv-compat/bin/python -m pytest -q -m "not slow" $(COMPAT_TESTS)

# The Ray half of captioning at scale (scale/ray_data.py, scale/ray_serve.py) in its own torch-free
# venv with the [serve,ray] extras, on a local two-node Ray cluster: the tests caption with the
# demo's trained bundle (CLIPCAP_TEST_BUNDLES), made with the dev venv when build/demo lacks it.
# From outside the checkout, as test-runtime's tests run, so the installed package is imported.
test-ray: $(VENV)/.installed
	test -x .venv-ray/bin/python || $(PYTHON) -m venv .venv-ray
	.venv-ray/bin/python -m pip install --quiet --upgrade pip
	.venv-ray/bin/python -m pip install --quiet '.[serve,ray]' pytest hypothesis
	! .venv-ray/bin/python -c "import torch" 2>/dev/null
	test -d build/demo/bundle-mlp || $(BIN)/clipcap demo --quick --out build/demo
	cd /tmp && CLIPCAP_TEST_BUNDLES=$(CURDIR)/build/demo $(CURDIR)/.venv-ray/bin/pytest -q -p no:cacheprovider \
	    --rootdir $(CURDIR) -c $(CURDIR)/pyproject.toml $(CURDIR)/tests/test_scale_ray*.py

ci: test test-runtime test-compat test-ray

# The Hugging Face Optimum baseline's own venv (optimum-onnx needs transformers < 4.58), which
# `clipcap bench --backends optimum` runs benchmarks/optimum_worker.py in. Idempotent.
bench-venv:
	PYTHON=$(PYTHON) bash benchmarks/optimum-venv.sh

clean:
	rm -rf .venv .venv-runtime .venv-compat demo-out build *.egg-info
