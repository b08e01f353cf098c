"""optiml-jax: OPT-IML instruction meta-learning in JAX/Flax."""

__version__ = "0.1.0"


def load_model(ckpt_dir: str, **kwargs):
    """Loads one of our checkpoints: returns ``(model, params)``. See `optiml_jax.models.convert.load_model`."""
    from optiml_jax.models.convert import load_model as _load_model  # lazy: keep `import optiml_jax` light

    return _load_model(ckpt_dir, **kwargs)
