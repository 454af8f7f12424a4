# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-mpi test test-oracle lint bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,distributed,mkl]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m demos.names $(ARGS)

# The names demo trained data-parallel on N MPI ranks (MPICH's mpiexec, installed in the venv).
N ?= 2
demo-mpi: $(STAMP)
	$(VENV)/bin/mpiexec -n $(N) $(PY) -m mpi4py -m demos.names --distributed $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

# Optional: every recurrent and Transformer layer against torch.nn (float64, values and
# gradients).  Torch is installed into the venv here only; it is never a dependency of the
# package or of `make test`.
test-oracle: $(STAMP)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pytest -q tests/test_torch_oracle.py tests/test_torch_oracle_attention.py $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# The engine's building blocks, then training steps against the optional peers PyTorch and JAX
# (same weights, losses checked first; 1 and 2 threads) -> benchmarks/results.md, and the
# causal Transformer LM against torch's nn.TransformerEncoder -> benchmarks/results_transformer.md.
# The peers are installed into the venv here only, pinned as in test-oracle (an unpinned torch
# downloads gigabytes); they are never dependencies of the package or of `make test`.
# ARGS go to bench_rnn.py, e.g. make bench ARGS="--configs N --threads 1 --quick".
bench: $(STAMP)
	$(PY) -m pip install -q torch==2.13.0 jax==0.10.2 jaxlib==0.10.2
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_rnn.py --threads 1,2 --markdown benchmarks/results.md $(ARGS)
	$(PY) benchmarks/bench_transformer.py --threads 1,2 --markdown benchmarks/results_transformer.md

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
