"""bench.revisions: modules swapped for their source at a git revision inside the block, restored after."""
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from bench import revisions
from optiml_jax import losses


def _has_history() -> bool:
    return subprocess.run(["git", "-C", str(revisions._REPO), "rev-parse", "HEAD"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(not _has_history(), reason="needs the project's git history")


def test_swap_runs_the_revision_source_and_restores_the_module():
    live = losses.cross_entropy_sums
    rng = np.random.default_rng(0)
    h, w = jnp.asarray(rng.normal(size=(2, 5, 4)), jnp.float32), jnp.asarray(rng.normal(size=(7, 4)), jnp.float32)
    t, wt = jnp.asarray(rng.integers(0, 7, (2, 5)), jnp.int32), jnp.ones((2, 5), jnp.float32)
    with revisions.modules_at("HEAD", ["optiml_jax.losses"]):
        old = losses.cross_entropy_sums
        assert old is not live
        assert old.__code__.co_filename == "HEAD:optiml_jax/losses.py"
        # The old function's helpers are the old ones too (its own namespace), not today's.
        assert old.__globals__ is not vars(losses)
        before = float(old(h, w, t, wt, chunk_tokens=3)[0])
    assert losses.cross_entropy_sums is live
    assert "HEAD:" not in losses._chunked_ce_fwd.__code__.co_filename
    np.testing.assert_allclose(before, float(live(h, w, t, wt, chunk_tokens=3)[0]), rtol=1e-6)


def test_module_is_restored_when_the_block_raises():
    live = dict(vars(losses))
    with pytest.raises(RuntimeError), revisions.modules_at("HEAD", ["optiml_jax.losses"]):
        raise RuntimeError("boom")
    assert vars(losses) == live


def test_unknown_revisions_and_files_are_errors():
    with pytest.raises(ValueError, match="unknown git revision"):
        revisions.resolve("no-such-revision-xyz")
    assert len(revisions.resolve("HEAD")) == 40
    with pytest.raises(ValueError, match="cannot read"), revisions.modules_at("HEAD", ["optiml_jax.no_such_module_x"]):
        pass


def test_train_step_cli_rejects_a_bad_revision_or_module(capsys):
    from bench import train_step

    assert train_step.main(["--before", "no-such-revision-xyz"]) == 2
    assert capsys.readouterr().err.strip() == "error: --before: unknown git revision 'no-such-revision-xyz'"
    assert train_step.main(["--before", "HEAD", "--before_modules", "numpy"]) == 2
    assert capsys.readouterr().err.startswith("error: --before_modules must name optiml_jax modules")
    assert train_step.main(["--only", "no such variant"]) == 2
    assert capsys.readouterr().err.startswith("error: --only")
