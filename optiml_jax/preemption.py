"""Preemption: SIGTERM (what SLURM, Kubernetes and spot VMs send before a kill) and SIGINT end a run cleanly.

The training loop asks `Preemption.should_stop(step)` after every step; once it says yes, the loop saves a
checkpoint at that step and exits with `errors.EXIT_PREEMPTED`.

* One process: a Python signal handler sets a flag. A second signal of the same kind gets the default behaviour
  back (so a second Ctrl-C interrupts at once).
* Several processes (`jax.distributed`): every process must save the *same* step, so the decision comes from
  JAX's preemption sync manager (`multihost_utils.reached_preemption_sync_point`), which JAX starts in
  `jax.distributed.initialize`: it catches SIGTERM on any process, agrees on a step through the coordination
  service and answers True on every process at that step. No Python SIGTERM handler is installed then (it would
  replace JAX's); SIGINT is turned into a SIGTERM to this process so that Ctrl-C takes the same path.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class Preemption:
    """Watches for SIGTERM/SIGINT during a training loop; a context manager that restores the old handlers."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._old: dict[int, Any] = {}
        self._multi = False

    def install(self) -> "Preemption":
        """Starts watching (installs the signal handlers)."""
        import jax

        self._multi = jax.process_count() > 1
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        wanted = (signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)
        for sig in wanted:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        """Puts the previous handlers back (idempotent); a signal received so far is still reported."""
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def __enter__(self) -> "Preemption":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self._multi:
            self.signal_name = name
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            os.kill(os.getpid(), signal.SIGTERM)  # hand over to JAX's preemption sync manager
            return
        if self.signal_name is None:
            logger.warning("%s received: finishing this step, then saving a checkpoint and stopping "
                           "(send it again to stop at once)", name)
            self.signal_name = name
        # The next signal of this kind behaves as if we had never caught it.
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def should_stop(self, step: int) -> bool:
        """Whether the run must save and stop after ``step`` (call it after every step, on every process)."""
        if not self._multi:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # the preemption service is disabled (jax_enable_preemption_service=False)
            return False
        if reached and self.signal_name is None:
            self.signal_name = "SIGTERM"
        return reached
