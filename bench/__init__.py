"""optiml-jax performance suite: `python -m bench.run [--quick]` (see bench/README.md).

Nothing here imports JAX at package import time: `bench.scaling` runs as a subprocess that must set
`XLA_FLAGS` before the first `import jax`.
"""
