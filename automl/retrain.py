"""``automl retrain``: a search's top-K configurations trained from scratch, as parallel Ray Tune trials.

Each member (a configuration and a seed) trains for the full epoch budget with early stopping on
the run's metric and the best weights restored, then hands its model and its validation and test
probabilities back to the driver as a Tune checkpoint, so members trained on other nodes of a
cluster land in the run folder too::

    RESULTS/NAME/retrain/members.parquet     one row per member: source trial, seed, epochs, val_*/test_*
    RESULTS/NAME/retrain/labels.npz          y_val, y_test and their image ids
    RESULTS/NAME/retrain/members/mNN/        model.keras, val_probs.npy, test_probs.npy, history.csv

Test probabilities are stored for the final evaluation only; nothing here or in the ensemble
chooses anything by them.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray import tune

from automl import console
from automl.data import Dataset, load_dataset
from automl.errors import UserError
from automl.files import atomic_write, staged_dir
from automl.hparams import parse_name
from automl.layout import RunLayout, best_column, hp_column, hyperparameter_columns, hyperparameter_name
from automl.metrics import classification_metrics, prefixed
from automl.objective import Objective
from automl.spec import Spec, load_spec
from automl.store import utc_now, write_run_info
from automl.trial import epoch_line


def top_configurations(run_dir: Path, top_k: int) -> list[dict]:
    """The ``top_k`` best finished trials by the run's objective: ``{trial_id, score, params}``."""
    run = RunLayout(run_dir)
    objective, trials = Objective.from_record(run.read_info(required=True)), run.read_trials()
    column = best_column(objective.name)
    if column not in trials or "status" not in trials:
        raise UserError(f"{run.trials}: no trial finished an epoch; nothing to retrain")
    usable = trials[trials["status"].isin(["completed", "pruned"]) & trials[column].notna()]
    if usable.empty:
        raise UserError(f"{run.root}: no trial finished an epoch; nothing to retrain")
    return [
        {
            "trial_id": row["trial_id"],
            "score": float(row[column]),
            "params": {hyperparameter_name(c): _param(hyperparameter_name(c), row[c])
                       for c in hyperparameter_columns(trials) if not _missing(row[c])},
        }
        for _, row in objective.sort(usable, column).head(top_k).iterrows()
    ]


def retrain(
    run_dir: Path,
    data_dir: Path,
    top_k: int = 5,
    seeds: int = 1,
    epochs: int | None = None,
    address: str | None = None,
    skip_bad_images: bool = False,
    cache_dir: Path | None = None,
) -> Path:
    """Retrain the run's ``top_k`` configurations with ``seeds`` seeds each; returns the retrain folder."""
    run = RunLayout(run_dir)
    if not run.spec.is_file():
        raise UserError(f"{run.root}: no search run here (no {run.spec.name}); run automl search first")
    spec, info = load_spec(run.spec), run.read_info(required=True)
    epochs = epochs or spec.training.epochs
    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.data.dataset_args())
    if info.get("data_fingerprint") and info["data_fingerprint"] != dataset.fingerprint:
        raise UserError(
            f"{data_dir}: not the data the search {run.name!r} used (fingerprint {dataset.fingerprint}, "
            f"search had {info['data_fingerprint']}); pass the same --data"
        )
    configs = top_configurations(run.root, top_k)
    members = [
        {"member_id": f"m{i * seeds + s + 1:02d}", "trial_id": c["trial_id"], "search_score": c["score"],
         "seed": spec.training.seed + s, "params": c["params"]}
        for i, c in enumerate(configs)
        for s in range(seeds)
    ]
    console.info(
        f"retraining {len(configs)} configurations x {seeds} seed(s) = {len(members)} members for up to "
        f"{epochs} epochs (early stopping patience {spec.training.early_stopping_patience} on {spec.objective})"
    )
    started, wall = utc_now(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="automl-retrain-") as scratch:
        results = _train_members(spec, dataset, members, epochs, address, info.get("storage"), run.name, scratch)
        rows = _collect(run, dataset, members, results)
    write_run_info(run.root, retrain={"started": started, "ended": utc_now(),
                                      "wall_s": round(time.monotonic() - wall, 1),
                                      "top_k": top_k, "seeds": seeds, "epochs": epochs, "members": rows})
    console.info(f"retrained {rows} members into {run.retrain}")
    return run.retrain


def _train_members(spec: Spec, dataset: Dataset, members: list[dict], epochs: int, address: str | None,
                   storage: str | None, name: str, scratch: str):
    """Every member as a Ray Tune trial; the results, or one line if the run was interrupted."""
    import ray

    from automl.search import start_ray

    settings = spec.search
    start_ray(address)
    trainable = tune.with_resources(
        tune.with_parameters(train_member, dataset=dataset, spec=spec, members=members, epochs=epochs,
                             cpus=settings.cpu),
        {"cpu": settings.cpu, "gpu": settings.gpu},
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"member": tune.grid_search(list(range(len(members))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent),
        run_config=tune.RunConfig(
            # On a multi-node cluster members must checkpoint to the search's shared storage.
            name="retrain", storage_path=f"{storage}/{name}" if storage else scratch, verbose=0,
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            callbacks=[_MemberLines(members, spec.objective, epochs)],
        ),
    )
    try:
        results = tuner.fit()
    finally:
        ray.shutdown()
    unfinished = [members[r.config["member"]]["member_id"] for r in results if r.error is None and r.checkpoint is None]
    if unfinished:
        # Interrupted (Ctrl-C, a stopped job): a partial ensemble would pass for the real one.
        raise UserError(f"retraining interrupted before {', '.join(unfinished)} finished; nothing written. "
                        f"Run it again: automl retrain {name} (or automl run ... --resume)")
    return results


def _collect(run: RunLayout, dataset: Dataset, members: list[dict], results) -> int:
    """Copy the members' checkpoints into ``retrain/`` with their table and the split's labels; returns the count."""
    with staged_dir(run.retrain) as stage:
        rows = []
        for result in results:
            member = members[result.config["member"]]
            if result.error is not None or result.checkpoint is None:
                reason = str(result.error).splitlines()[-1] if result.error else "no model"
                console.info(f"member {member['member_id']} failed: {reason}")
                continue
            result.checkpoint.to_directory(str(stage / run.member(member["member_id"]).relative_to(run.retrain)))
            rows.append({k: v for k, v in member.items() if k != "params"}
                        | {hp_column(k): v for k, v in member["params"].items()}
                        | {k: v for k, v in result.metrics.items() if k.startswith(("val_", "test_"))}
                        | {"epochs": result.metrics.get("epochs"), "best_epoch": result.metrics.get("best_epoch")})
        if not rows:
            raise UserError(f"{run.root}: every retrained member failed; see the lines above")
        table = pd.DataFrame(rows).sort_values("member_id")
        atomic_write(stage / run.members.relative_to(run.retrain), lambda f: table.to_parquet(f, index=False))
        split = dataset.table["split"]
        np.savez(stage / run.labels.relative_to(run.retrain),
                 y_val=dataset.subset("val")[1], y_test=dataset.subset("test")[1],
                 val_ids=dataset.table["image_id"][split == "val"].to_numpy(dtype=str),
                 test_ids=dataset.table["image_id"][split == "test"].to_numpy(dtype=str),
                 class_names=np.array(dataset.class_names))
    return len(rows)


def train_member(config: dict, dataset: Dataset = None, spec: Spec = None, members=None, epochs=None, cpus=1.0) -> None:
    """One Tune trial: train a member from scratch, report each epoch, hand back its files as a checkpoint."""
    import keras

    from automl.hparams import ModelConfig
    from automl.trial import configure_tensorflow, fit_candidate, predict_proba

    configure_tensorflow(cpus)
    member = members[config["member"]]

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            tune.report({k: float(v) for k, v in (logs or {}).items()}
                        | {"epoch": epoch + 1, "epoch_s": time.monotonic() - self.started})

    model_config = ModelConfig.from_params(member["params"])
    result = fit_candidate(model_config, dataset, spec.objective, spec.training, callbacks=[Report()], epochs=epochs,
                           seed=member["seed"])
    folder = Path(tempfile.mkdtemp(prefix=f"{member['member_id']}-"))
    result.model.save(RunLayout.member_model(folder))
    final = {"epochs": len(result.history), "best_epoch": result.best_epoch}
    for split in ("val", "test"):
        images, labels = dataset.subset(split)
        probs = predict_proba(result.model, images)
        np.save(RunLayout.member_probs(folder, split), probs)
        final |= prefixed(classification_metrics(labels, probs, dataset.class_names), split)
    pd.DataFrame(result.history).to_csv(RunLayout.member_history(folder), index=False)
    RunLayout.member_record(folder).write_text(json.dumps(member | final))
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    shutil.rmtree(folder, ignore_errors=True)


def read_members(run_dir: Path) -> pd.DataFrame:
    return RunLayout(run_dir).read_members()


class _MemberLines(tune.Callback):
    """A line per member epoch as it ends (the same line as automl train's), and one per finished member."""

    def __init__(self, members: list[dict], objective: Objective, epochs: int):
        self.members, self.objective, self.epochs = members, objective, epochs
        self.best: dict[str, tuple[float, int]] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch_s" not in result:
            return  # the member's final report
        member = self.members[trial.config["member"]]["member_id"]
        best = self.best.get(member, (math.nan, 0))
        if self.objective.better(result.get(self.objective.name), best[0]):
            best = self.best[member] = (float(result[self.objective.name]), int(result["epoch"]))
        console.info(f"member {member} " + epoch_line(int(result["epoch"]), self.epochs, result, result["epoch_s"],
                                                       self.objective, best))

    def on_trial_complete(self, iteration, trials, trial, **info):
        member, result = self.members[trial.config["member"]], trial.last_result or {}
        console.info(
            f"member {member['member_id']} (trial {member['trial_id']}, seed {member['seed']}) done: "
            f"{result.get('epochs')} epochs, best epoch {result.get('best_epoch')}, "
            f"{self.objective.name} {result.get(self.objective.name, math.nan):.3f}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        console.info(f"member {self.members[trial.config['member']]['member_id']} failed "
                     f"(traceback: {trial.error_file})")


def _param(name: str, value):
    """A hyperparameter read back from a parquet column, in its own type (int columns with gaps are floats)."""
    if isinstance(value, np.generic):
        value = value.item()
    hp, _ = parse_name(name)
    if hp.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
