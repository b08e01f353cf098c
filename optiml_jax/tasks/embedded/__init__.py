"""The embedded suite's families, by skill area (`optiml_jax.tasks.embedded_suite` is the public API)."""
