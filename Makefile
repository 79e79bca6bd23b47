# Two targets do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	# torch==2.13.0 first, exactly so: it is the CPU wheel on this machine's disk (no CUDA download).
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e '.[test]'
	# torchtitan's config parser for the export check, without its training stack (datasets,
	# tokenizers, and Triton through its MoE kernels: over 1 GB); the check imports torchtitan/config only
	.venv/bin/pip install -q --no-deps torchtitan==0.2.2
	touch $(VENV_STAMP)

# torchtitan 0.3.0 (Python dataclass configs) for the torchtitan-py export check, in a folder of
# its own beside 0.2.2 (benchmarks/torchtitan_py_check.py puts it first on its path), with the
# spmd_types its ParallelDims imports
TITAN_PY_STAMP := .venv/torchtitan-0.3.0/.installed
$(TITAN_PY_STAMP): $(VENV_STAMP)
	.venv/bin/pip install -q --no-deps --target .venv/torchtitan-0.3.0 torchtitan==0.3.0 spmd_types==0.2.3
	touch $(TITAN_PY_STAMP)

# A headless browser for the HTML report's rendering test (tests/test_report_html.py): Debian's
# chromium, installed where this runs as root with apt; elsewhere that one test skips, saying why.
BROWSER_STAMP := .venv/.browser
$(BROWSER_STAMP): $(VENV_STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium >/dev/null; } || echo "no chromium: tests/test_report_html.py skips its browser check"
	touch $(BROWSER_STAMP)

.PHONY: setup demo test validate
setup: $(VENV_STAMP) $(BROWSER_STAMP) $(TITAN_PY_STAMP)

demo: $(VENV_STAMP)
	.venv/bin/clusterplan demo

test: $(VENV_STAMP) $(BROWSER_STAMP) $(TITAN_PY_STAMP)
	$(PY) -m pytest -q

validate: $(VENV_STAMP)
	.venv/bin/clusterplan validate --dataset benchmarks/published_runs.csv
