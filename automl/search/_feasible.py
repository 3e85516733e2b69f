"""Feasible draws only: a searcher's draw that cannot run at the run's image size never takes a trial.

Every engine's searcher passes its draws through :meth:`Rejections.draw`, which checks each on the driver
(:meth:`automl.space.SearchSpace.infeasible`: pure Python, no model built) and draws again when the candidate
cannot run: too many poolings, 'valid' padding, a backbone too large for its input. The rejected draws are counted
by reason and recorded in ``run.json`` as ``infeasible_draws``; Optuna is also told each one at once
(:class:`automl.search._searchers.FeasibleOptunaSearch`), so that TPE learns the region is bad.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from automl.errors import SpecError, UserError
from automl.space import SearchSpace
from automl.store import write_run_info

#: Draws in a row that may be infeasible before the search stops with an error naming the space: at 28 px the
#: seeds' full space rejects about a third of its draws (benchmarks/infeasible_draws.py), so a space that rejects
#: a thousand in a row is one where nothing, or almost nothing, can run.
MAX_REDRAWS = 1000
#: The reason of a rejected draw that is not an :class:`~automl.errors.InfeasibleError` (a combination of values
#: the hyperparameters do not allow, e.g. one list value per block for a drawn number of blocks that differs).
INVALID = "invalid"


def reason(error: SpecError) -> str:
    """The short reason a draw was rejected for: the rule it breaks (``pooling``, ``valid_padding``, ...)."""
    return getattr(error, "kind", INVALID)


class Rejections:
    """Checks draws against the image size, redraws the infeasible ones and counts them by reason.

    Pickled with the searcher that holds it (Tune saves searchers in its experiment snapshots), so a resumed search
    keeps its count. ``run_dir`` None counts without recording (a probe of the space, a benchmark).
    """

    def __init__(self, space: SearchSpace, image_size: tuple[int, int], where: str, run_dir: Path | None = None):
        self.space, self.image_size, self.where, self.run_dir = space, tuple(image_size), where, run_dir
        self.by_reason: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def to_record(self) -> dict[str, Any]:
        """What ``run.json`` holds as ``infeasible_draws``."""
        return {"rejected": self.count, "by_reason": dict(sorted(self.by_reason.items()))}

    def check(self, config: dict[str, Any]) -> SpecError | None:
        return self.space.infeasible(config, self.image_size)

    def draw(self, sample: Callable[[], Any], reject: Callable[[SpecError], None] | None = None) -> Any:
        """The first feasible one of ``sample()``'s draws; ``reject(error)`` is called for each infeasible one.

        A draw that is not a config (None: the searcher has nothing to suggest now, or Tune's FINISHED) is
        passed on as it is. After :data:`MAX_REDRAWS` infeasible draws in a row, a :class:`UserError` names the
        space and the last reason.
        """
        rejected = 0
        try:
            for _ in range(MAX_REDRAWS):
                config = sample()
                if not isinstance(config, dict) or (error := self.check(config)) is None:
                    return config
                rejected += 1
                self.by_reason[reason(error)] = self.by_reason.get(reason(error), 0) + 1
                if reject is not None:
                    reject(error)
        finally:
            if rejected:
                self.record()
        height, width = self.image_size
        raise UserError(
            f"{self.where}: {MAX_REDRAWS} draws in a row from the search space cannot run on {height}x{width} "
            f"images (the last: {error}); narrow the ranges it names, or use a larger data.image_size"
        )

    def record(self) -> None:
        if self.run_dir is not None:
            write_run_info(self.run_dir, infeasible_draws=self.to_record())


# --- automl check: a space described without a search ---------------------------------------------------------

#: Feasible draws whose models ``automl check`` builds for the parameter range (a build takes 0.05-0.5 s).
PARAMETER_DRAWS = 40
#: Training batches ``automl check`` times per measured draw, after one untimed batch that traces the graph.
TIMED_BATCHES = 5
#: HAM10000's images: an epoch is as many samples as its train split has (automl.trial's epoch definition).
HAM10000_IMAGES = 10_015


def random_draws(space: SearchSpace, count: int, seed: int = 0) -> list[dict[str, Any]]:
    """``count`` configurations drawn at random from ``space``, as a random search draws them (conditional
    dimensions only where their condition holds), feasible or not."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sample = space.optuna_define_by_run()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    drawn = []
    for _ in range(count):
        trial = study.ask()
        drawn.append(space.active(sample(trial) | trial.params))
    return drawn


def domain_text(dimension) -> str:
    """A dimension's domain as the spec writes it: ``choice [2, 3]``, ``float [0.0003, 0.003] log``, ``fixed 3``."""
    if dimension.kind == "fixed":
        return f"fixed {dimension.values[0]}"
    if dimension.kind == "choice":
        return f"choice {list(dimension.values)}"
    step = f" step {dimension.step:g}" if dimension.step else ""
    return f"{dimension.kind} [{dimension.low:g}, {dimension.high:g}]{step}{' log' if dimension.log else ''}"


def check_space(spec, image_size: tuple[int, int], draws: int = 1000, timing: bool = True, seed: int = 0) -> list[str]:
    """What ``automl check SPEC`` prints: the space's dimensions and conditions, the share of ``draws`` random draws
    that can run at ``image_size``, the parameter range of the feasible ones and, with ``timing``, seconds per
    epoch on this machine measured on the smallest and the median of them. No data is read, no trial is run."""
    space = spec.space
    height, width = image_size
    lines = [f"spec {spec.name} ({spec.source or 'command line'}), checked at {height}x{width}"]
    searched, fixed = space.searched, [d for d in space.dimensions if d.kind == "fixed"]
    lines.append(f"dimensions: {len(searched)} searched, {len(fixed)} fixed "
                 f"({', '.join(f'{d.name}={d.values[0]}' for d in fixed) or 'none'})")
    width_of = max((len(d.name) for d in searched), default=0)
    lines += [f"  {d.name:<{width_of}}  {domain_text(d)}" + (f"   when {d.condition}" if d.condition else "")
              for d in searched]
    conditional = [d for d in space.dimensions if d.condition]
    said = "; ".join(f"{d.name} when {d.condition}" for d in conditional)
    lines.append(f"conditions: {len(conditional)}" + (f" ({said})" if said else ""))
    rejections = Rejections(space, image_size, "check")
    feasible = []
    for config in random_draws(space, draws, seed):
        error = rejections.check(config)
        if error is None:
            feasible.append(config)
        else:
            rejections.by_reason[reason(error)] = rejections.by_reason.get(reason(error), 0) + 1
    reasons = ", ".join(f"{name} {count}" for name, count in sorted(rejections.by_reason.items()))
    lines.append(f"feasible draws at {height}x{width}: {len(feasible)} of {draws} ({len(feasible) / draws:.1%})"
                 + (f"; rejected by reason: {reasons}" if reasons else ""))
    if not feasible:
        lines.append("nothing to measure: no draw can run at this size (narrow the ranges named above, or use a "
                     "larger image size)")
        return lines
    lines += _parameters_and_timing(spec, image_size, feasible[:PARAMETER_DRAWS], timing)
    return lines


def _parameters_and_timing(spec, image_size: tuple[int, int], configs: list[dict], timing: bool) -> list[str]:
    """The parameter range of ``configs`` (their models built) and, with ``timing``, measured seconds per epoch."""
    import time

    import numpy as np

    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras

    from automl.data import class_names
    from automl.hparams import ModelConfig
    from automl.model import build_model

    classes = len(class_names(spec.data.task))
    built = []
    for config in configs:
        model_config = ModelConfig.from_params(config)
        built.append((build_model(model_config, image_size, classes).count_params(), model_config))
        keras.backend.clear_session()
    built.sort(key=lambda item: item[0])
    counts = [count for count, _ in built]
    lines = [f"parameters over {len(built)} feasible draws: min {counts[0]:,}, median {counts[len(counts) // 2]:,}, "
             f"max {counts[-1]:,}" + (f" (training.max_parameters {spec.training.max_parameters:,})"
                                      if spec.training.max_parameters else "")]
    if not timing:
        return lines
    train_fraction = spec.data.split.fractions[0]
    samples = round(HAM10000_IMAGES * train_fraction)
    rng = np.random.default_rng(0)
    measured = []
    for label, (count, model_config) in (("smallest", built[0]), ("median", built[len(built) // 2])):
        batch = model_config.batch_size
        model = build_model(model_config, image_size, classes)
        x = rng.random((batch, *image_size, 3), dtype=np.float32)
        y = rng.integers(0, classes, batch)  # class indices (sparse cross-entropy), or 0/1 for the sigmoid
        y = y if classes > 2 else y.astype(np.float32)
        model.train_on_batch(x, y)  # traces the graph: not timed
        start = time.perf_counter()
        for _ in range(TIMED_BATCHES):
            model.train_on_batch(x, y)
        per_batch = (time.perf_counter() - start) / TIMED_BATCHES
        seconds = per_batch * math.ceil(samples / batch)
        measured.append(f"{label} draw ({count:,} parameters, batch {batch}) {seconds:.1f} s")
        keras.backend.clear_session()
    lines.append("seconds per epoch on this machine: " + "; ".join(measured))
    lines.append(f"  (estimated: {TIMED_BATCHES} training batches of random {image_size[0]}x{image_size[1]} images "
                 f"timed after one untimed batch, times the batches of an epoch of {samples:,} samples, HAM10000's "
                 f"{HAM10000_IMAGES:,} images x the train fraction {train_fraction:g}, with every core this process "
                 "sees; a trial sharing the cores with others, reading real images and validating takes longer)")
    return lines
