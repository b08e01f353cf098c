"""In-loop evaluation during training (t5x's inference evaluator): a small held-out evaluation on the training mesh.

`InLoopEval` is a plain configuration (bound from gin as ``optiml_jax.InLoopEval`` and passed to
``train.inloop_eval``); it imports nothing heavy, so the training CLI can register it at import time without
loading the task layer. `InLoopEval.build` plans and renders the examples once (through
`optiml_jax.evaluation`), and the returned `InLoopEvaluator` scores them with the current parameters whenever the
training loop asks (`InLoopEval.due`), returning one metrics line for metrics.jsonl / TensorBoard.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np



@dataclasses.dataclass(frozen=True)
class InLoopEval:
    """A small held-out evaluation run inside training every ``every`` steps, on the training mesh.

    Bound from gin as ``optiml_jax.InLoopEval`` (``train.inloop_eval = @optiml_jax.InLoopEval()``). Per level it
    keeps ``tasks_per_level`` tasks with examples on disk, half scored by rank classification and half by short
    greedy generation where the split has both, ``max_examples`` examples each; the examples are rendered once at
    start. Its scores go to metrics.jsonl and TensorBoard (``inloop/...``) beside the held-out loss.

    Attributes:
      every: steps between evaluations (also after the last step); <= 0 disables it.
      split / split_definition / data_dir / shots / seed / max_examples / max_new_tokens: as in `EvalConfig`.
      tasks_per_level: tasks per generalization level.
      batch_size: prompts per device call.
    """

    every: int = 0
    split: str = "validation"
    split_definition: str | None = None
    data_dir: str | None = None
    tasks_per_level: int = 2
    shots: tuple[int, ...] = (0,)
    max_examples: int = 4
    max_new_tokens: int = 16
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tasks_per_level", "max_examples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"InLoopEval.{name} must be >= 1, got {getattr(self, name)}")

    def config(self) -> Any:
        """The `EvalConfig` of one in-loop evaluation (no intervals: a training curve wants the means); it
        validates the split, shots and levels."""
        from optiml_jax.evaluation import EvalConfig

        return EvalConfig(split=self.split, split_definition=self.split_definition, data_dir=self.data_dir,
                          shots=tuple(self.shots), max_examples=self.max_examples,
                          max_new_tokens=self.max_new_tokens, seed=self.seed, bootstrap=None)

    def due(self, step: int, final_step: int) -> bool:
        """Whether to evaluate after ``step`` (every ``every`` steps and after the last one)."""
        return self.every > 0 and (step % self.every == 0 or step == final_step)

    def build(self, model: Any, vocab: Any, mesh: Any = None, rules: Any = None) -> "InLoopEvaluator":
        """Plans and renders the evaluation once; returns the callable run at each evaluation step."""
        from optiml_jax.evaluation import plan, render_units, safe_name
        from optiml_jax.tasks.schema import LEVELS

        cfg = self.config()
        everything = plan(cfg)
        rendered = render_units(everything, cfg)
        chosen = []
        for lv in LEVELS:
            names = list(dict.fromkeys(u.task.name for u in everything if u.level == lv))
            with_data = [n for n in names if rendered[f"{safe_name(n)}.{cfg.shots[0]}shot"]]
            ranked = [n for n in with_data if rendered[f"{safe_name(n)}.{cfg.shots[0]}shot"][0].candidates]
            generated = [n for n in with_data if n not in ranked]
            half = (self.tasks_per_level + 1) // 2
            pick = ranked[:half] + generated[: self.tasks_per_level - min(half, len(ranked))]
            pick += [n for n in with_data if n not in pick][: self.tasks_per_level - len(pick)]
            chosen += [u for u in everything if u.level == lv and u.task.name in pick]
        if not chosen:
            raise ValueError(f"InLoopEval: split {self.split!r} has no evaluation task with examples on disk")
        from optiml_jax import inference

        predictor = inference.Predictor(model, None, vocab, mesh=mesh, rules=rules, batch_size=self.batch_size,
                                        name="in-loop")
        return InLoopEvaluator(cfg, chosen, {u.key: rendered[u.key] for u in chosen}, predictor)


@dataclasses.dataclass
class InLoopEvaluator:
    """The planned in-loop evaluation: call it with the current parameters and step."""

    cfg: Any            # evaluation.EvalConfig
    units: list         # evaluation.Unit
    examples: dict      # unit key -> rendered examples
    predictor: Any      # inference.Predictor (its params replaced at each call)

    def __call__(self, params: Any, step: int) -> dict:
        """Scores the units with ``params`` (sharded as in training); returns one metrics line:
        {"step", "inloop/<level>/<k>shot", "inloop/average/<k>shot", "inloop/rank_classification",
        "inloop/generation", "inloop/seconds"} (scores 0-100; a level without data is left out)."""
        from optiml_jax.evaluation import aggregate, evaluate_many
        from optiml_jax.tasks.schema import LEVELS

        t0 = time.time()
        self.predictor.params = params
        scored = evaluate_many(self.predictor, [(u.task, self.examples[u.key]) for u in self.units], self.cfg)
        rows = [dict(summary, level=u.level, num_shots=u.shots) for u, (summary, _) in zip(self.units, scored)]
        agg = aggregate(rows, shots=self.cfg.shots, levels=LEVELS, bootstrap=None)
        line: dict[str, Any] = {"step": int(step)}
        for lv, scores in agg["level_scores"].items():
            for k, v in scores.items():
                if v is not None:
                    line[f"inloop/{lv}/{k}shot"] = v
        for k, v in agg["overall"].items():
            if v is not None:
                line[f"inloop/average/{k}shot"] = v
        for mode in ("rank_classification", "generation"):
            vals = [r["score"] for _, recs in scored for r in recs if r["mode"] == mode]
            if vals:
                line[f"inloop/{mode}"] = float(np.mean(vals))
        line["inloop/seconds"] = round(time.time() - t0, 2)
        return line
