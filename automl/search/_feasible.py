"""Feasible draws only: a searcher's draw that cannot run at the run's image size never takes a trial.

Every engine's searcher passes its draws through :meth:`Rejections.draw`, which checks each on the driver
(:meth:`automl.space.SearchSpace.infeasible`: pure Python, no model built) and draws again when the candidate
cannot run: too many poolings, 'valid' padding, a backbone too large for its input. The rejected draws are counted
by reason and recorded in ``run.json`` as ``infeasible_draws``; Optuna is also told each one at once
(:class:`automl.search._searchers.FeasibleOptunaSearch`), so that TPE learns the region is bad.
"""

from __future__ import annotations

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
