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

.PHONY: setup demo test validate
setup: $(VENV_STAMP)

demo: $(VENV_STAMP)
	.venv/bin/clusterplan demo

test: $(VENV_STAMP)
	$(PY) -m pytest -q

validate: $(VENV_STAMP)
	.venv/bin/clusterplan validate --dataset benchmarks/published_runs.csv
