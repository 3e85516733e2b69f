"""The Python API: every stage of the ``automl`` command as a function, for notebooks and scripts.

Each function is a thin wrapper over the stage's own function (:func:`automl.search.run_search`,
:func:`automl.retrain.retrain`, :func:`automl.ensemble.evaluate_run`, :func:`automl.export.export_run`,
:func:`automl.predict.predict_files`, :func:`automl.evaluate.evaluate_model`) and does what the command of the same
name does, with the same defaults: ``automl.run`` is ``automl run``. Spec settings are keyword arguments named
after their flags (``--num-samples`` -> ``num_samples=``, ``--top-k`` -> ``top_k=``); a spec is a YAML file or a
shipped spec's name (``"quick"``). TensorFlow and Ray load on the first call, not on ``import automl``.

Example (``tests/test_api.py`` runs it on a small generated HAM10000 folder)::

    import automl

    # The shipped demo spec, made smaller still: 2 trials of 2 epochs, 1 member retrained for 1 epoch.
    run = automl.run("quick", data="HAM10000", name="demo", results="results",
                     num_samples=2, max_epochs=2, top_k=1, epochs=1)
    print(run.leaderboard[["trial_id", "status", "best_val_balanced_accuracy"]])
    print(run.metrics["balanced_accuracy"], run.model_dir, run.report)

    table = automl.predict(run.model_dir, ["HAM10000/HAM10000_images"], out="predictions.csv")
    print(table["dx_pred"].value_counts())

    same = automl.load_run("demo", results="results")  # a finished run, read back later
    assert same.model_dir == run.model_dir

Bad input raises :class:`automl.errors.UserError` (one line saying what is wrong), as the command prints it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl.errors import UserError
from automl.stages import DECISION, ENSEMBLE_METHOD

if TYPE_CHECKING:
    import pandas as pd

    from automl.layout import RunLayout
    from automl.spec import Spec

__all__ = ["Run", "ensemble", "evaluate", "export", "load_run", "predict", "retrain", "run", "search"]


@dataclass(frozen=True)
class Run:
    """A run folder (``RESULTS/NAME``), read when asked: each property reflects the folder as it is now."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def info(self) -> dict:
        """``run.json``: what the run was made with and how far it got."""
        return self._layout.read_info(required=True)

    @property
    def leaderboard(self) -> pd.DataFrame:
        """The search's trials, best first by the run's objective (``best_METRIC`` columns at each trial's best
        epoch, ``hp_NAME`` per hyperparameter)."""
        from automl.layout import best_column
        from automl.objective import Objective

        objective = Objective.from_record(self.info)
        trials = self._layout.read_trials()
        column = best_column(objective.name)
        return (objective.sort(trials, column) if column in trials else trials).reset_index(drop=True)

    @property
    def members(self) -> pd.DataFrame | None:
        """The retrained members with their validation and test figures, or None before ``retrain``."""
        return self._layout.read_members() if self._layout.members.is_file() else None

    @property
    def metrics(self) -> dict:
        """The shipped ensemble's test-split figures (what ``report.md`` tabulates), or {} before ``ensemble``."""
        if not self._layout.ensemble_metrics.is_file():
            return {}
        return self._layout.read_ensemble_metrics()["ensemble"]["test"]

    @property
    def report(self) -> Path | None:
        """The ensemble's ``report.md``, or None before ``ensemble``."""
        return self._layout.report if self._layout.report.is_file() else None

    @property
    def model_dir(self) -> Path | None:
        """The exported model folder ``RESULTS/NAME/model`` (what ``predict``/``evaluate`` take), or None."""
        from automl.layout import ModelLayout

        model = ModelLayout(self._layout.model.root)
        return model.root if model.card_json.is_file() else None

    @property
    def _layout(self) -> RunLayout:
        from automl.layout import RunLayout

        return RunLayout(self.folder)


def load_run(run: str | Path | Run, results: str | Path = "results") -> Run:
    """A run by name (in ``results``) or by its folder; a :class:`UserError` if it is not a run folder."""
    from automl.layout import RunLayout

    folder = _folder(run, results)
    if not RunLayout(folder).info_file.is_file():
        raise UserError(f"{folder}: not a run folder (no run.json); run automl.search or automl.run first")
    return Run(folder)


def search(spec: str | Path, data: str | Path, name: str, results: str | Path = "results", *,
           resume: bool = False, ray_address: str | None = None, storage: str | None = None,
           skip_bad_images: bool = False, cache_dir: str | Path | None = None, **settings: Any) -> Run:
    """``automl search``: search the spec's space; returns the run. ``settings`` override the spec's."""
    from automl.console import import_tensorflow_quietly

    chosen = _spec(spec, settings)
    with _locked(Path(results) / name, f"automl.search({name!r})") as layout:
        import_tensorflow_quietly()
        from automl.search import run_search

        run_search(chosen, Path(data), name, layout.root.parent, address=ray_address, resume=resume,
                   skip_bad_images=skip_bad_images, cache_dir=_path(cache_dir), storage=storage)
    return Run(layout.root)


def retrain(run: str | Path | Run, data: str | Path | None = None, *, top_k: int | None = None,
            seeds: int | None = None, epochs: int | None = None, refit: bool = False, results: str | Path = "results",
            ray_address: str | None = None, skip_bad_images: bool = False,
            cache_dir: str | Path | None = None) -> Run:
    """``automl retrain``: train the search's ``top_k`` configurations again from scratch, ``seeds`` times each
    (defaults: the run spec's ``retrain.top_k``, ``retrain.seeds`` and ``training.epochs``); ``data`` defaults to
    the folder the search used. With ``refit``, the ensemble's members again on train+val, reported by the
    ensemble stage."""
    from automl.console import import_tensorflow_quietly

    if refit and any(value is not None for value in (top_k, seeds, epochs)):
        raise UserError("top_k, seeds, epochs: refit retrains the ensemble's members for their own best epochs; "
                        "drop them")
    with _locked(_folder(run, results), "automl.retrain()") as layout:
        data_dir = _data_of(layout, data)
        summary = layout.read_ensemble() if refit else {}  # a run without an ensemble fails before the import
        import_tensorflow_quietly()
        from automl.ensemble import evaluate_run
        from automl.retrain import refit as refit_members
        from automl.retrain import retrain as retrain_members

        options = {"address": ray_address, "skip_bad_images": skip_bad_images, "cache_dir": _path(cache_dir)}
        if not refit:
            retrain_members(layout.root, data_dir, top_k=top_k, seeds=seeds, epochs=epochs, **options)
        else:
            refit_members(layout.root, data_dir, **options)
            # The same choices again (all made on validation, deterministically), now with the refit's test figures.
            evaluate_run(layout.root, method=summary["method"], decision=summary.get("decision", DECISION))
    return Run(layout.root)


def ensemble(run: str | Path | Run, *, method: str = ENSEMBLE_METHOD, decision: str = DECISION,
             results: str | Path = "results") -> Run:
    """``automl ensemble``: weigh the retrained members on validation, judge them on the test split, write
    ``ensemble/report.md``."""
    with _locked(_folder(run, results), "automl.ensemble()") as layout:
        from automl.ensemble import evaluate_run

        evaluate_run(layout.root, method=method, decision=decision)
    return Run(layout.root)


def export(run: str | Path | Run, out: str | Path | None = None, *, refit: bool = False, overwrite: bool = False,
           results: str | Path = "results") -> Path:
    """``automl export``: the run's ensemble as a self-contained model folder (default ``RESULTS/NAME/model``);
    returns the folder."""
    from automl.console import import_tensorflow_quietly
    from automl.files import check_output_dir

    with _locked(_folder(run, results), "automl.export()") as layout:
        layout.read_ensemble()  # a run without an ensemble fails here, before TensorFlow's import
        target = Path(out) if out is not None else layout.model.root
        check_output_dir(target, overwrite=overwrite)
        import_tensorflow_quietly()
        from automl.export import export_run

        return export_run(layout.root, target, overwrite=overwrite, refit=refit)


def predict(model_dir: str | Path, inputs: Sequence[str | Path], out: str | Path = "preds.csv", *,
            batch_size: int = 64) -> pd.DataFrame:
    """``automl predict``: classify image files (or every image in folders) with an exported model; writes ``out``
    and returns the same table (``image_id, path, dx_pred, p_CLASS..., error``)."""
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.predict import predict_files

    return predict_files(Path(model_dir), [str(i) for i in inputs], Path(out), batch_size=batch_size)


def evaluate(model_dir: str | Path, data: str | Path, *, labels: str | Path | None = None, name: str | None = None,
             out: str | Path | None = None) -> dict:
    """``automl evaluate``: measure an exported model on a labelled folder (default output
    ``MODEL_DIR/evaluations/NAME``); returns what its ``metrics.json`` holds."""
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.evaluate import evaluate_model

    return evaluate_model(model_dir, data, out=out, name=name, labels=labels)


def run(spec: str | Path, data: str | Path, name: str, results: str | Path = "results", *,
        method: str = ENSEMBLE_METHOD, decision: str = DECISION, resume: bool = False,
        ray_address: str | None = None, storage: str | None = None, skip_bad_images: bool = False,
        cache_dir: str | Path | None = None, **settings: Any) -> Run:
    """``automl run``: search, retrain the best (``top_k`` x ``seeds`` members), ensemble them (judged on the test
    split) and export the model to ``RESULTS/NAME/model``; returns the run. ``settings`` override the spec's."""
    chosen = _spec(spec, settings)
    with _locked(Path(results) / name, f"automl.run({name!r})") as layout:
        run_stages(chosen, Path(data), layout, method=method, decision=decision, resume=resume,
                   ray_address=ray_address, storage=storage, skip_bad_images=skip_bad_images,
                   cache_dir=_path(cache_dir), results_label=str(results), command=f"automl.run({name!r})")
    return Run(layout.root)


def run_stages(spec: Spec, data: Path, layout: RunLayout, *, method: str, decision: str, resume: bool,
               ray_address: str | None, storage: str | None, skip_bad_images: bool, cache_dir: Path | None,
               results_label: str, command: str) -> Path | None:
    """The stages of ``automl run`` in a run folder this process holds (the one owner of the chaining, for
    :func:`run` and the command line); returns the exported model folder, or None when the search was
    interrupted (it said how to resume)."""
    from automl.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from automl.ensemble import evaluate_run
    from automl.export import export_run
    from automl.retrain import retrain as retrain_members
    from automl.search import run_search
    from automl.store import write_run_info

    if resume and layout.read_info().get("status") == "finished":
        print(f"search {layout.name} already finished; going on to retrain")
    else:
        run_search(spec, data, layout.name, layout.root.parent, address=ray_address, resume=resume,
                   skip_bad_images=skip_bad_images, cache_dir=cache_dir, storage=storage, results_label=results_label)
        if layout.read_info().get("status") != "finished":
            return None
    write_run_info(layout.root, command=command)
    retrain_members(layout.root, data, top_k=spec.retrain.top_k, seeds=spec.retrain.seeds, address=ray_address,
                    skip_bad_images=skip_bad_images, cache_dir=cache_dir)
    evaluate_run(layout.root, method=method, decision=decision)
    return export_run(layout.root, layout.model.root)


# --- helpers -----------------------------------------------------------------------------------------------------

def setting_keywords() -> dict[str, str]:
    """Keyword argument -> spec setting key, for every setting a command offers as a flag (``--num-samples`` ->
    ``num_samples`` -> ``search.num_samples``)."""
    from automl.spec import SETTINGS

    return {s.flag[2:].replace("-", "_"): s.key for s in SETTINGS.values() if s.flag}


def _spec(spec: str | Path, settings: Mapping[str, Any]) -> Spec:
    from automl.spec import load_spec

    keywords = setting_keywords()
    unknown = sorted(set(settings) - set(keywords))
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a spec setting (known: {', '.join(sorted(keywords))})")
    return load_spec(spec).with_overrides({keywords[k]: v for k, v in settings.items()})


def _folder(run: str | Path | Run, results: str | Path) -> Path:
    """A run given as a :class:`Run`, a run folder (one holding ``run.json``) or a name in ``results``."""
    if isinstance(run, Run):
        return run.folder
    path = Path(run)
    return path if (path / "run.json").is_file() else Path(results) / path


def _data_of(layout: RunLayout, data: str | Path | None) -> Path:
    if data is not None:
        return Path(data)
    recorded = layout.read_info(required=True).get("data_dir")
    if not recorded:
        raise UserError(f"{layout.info_file}: no data folder recorded; pass data=")
    return Path(recorded)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@contextlib.contextmanager
def _locked(folder: Path, command: str) -> Iterator[RunLayout]:
    """The run folder, held by this process alone for the block (as the command line holds it)."""
    from automl.layout import RunLayout
    from automl.lock import run_lock

    layout = RunLayout(folder)
    with run_lock(layout.lock, command):
        yield layout
