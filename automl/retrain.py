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
from automl.metrics import classification_metrics, prefixed
from automl.spec import load_spec
from automl.store import SPEC_FILE, hyperparameter_columns, read_run_info, read_trials, utc_now, write_run_info

RETRAIN_DIR = "retrain"
MEMBERS_FILE = "members.parquet"
LABELS_FILE = "labels.npz"


def top_configurations(run_dir: Path, top_k: int) -> list[dict]:
    """The ``top_k`` best finished trials by the run's metric: ``{trial_id, score, params}``."""
    info, trials = read_run_info(run_dir), read_trials(run_dir)
    column = f"best_{info['metric']}"
    usable = trials[trials["status"].isin(["completed", "pruned"]) & trials[column].notna()]
    if usable.empty:
        raise UserError(f"{run_dir}: no trial finished an epoch; nothing to retrain")
    ranked = usable.sort_values(column, ascending=info["mode"] == "min").head(top_k)
    return [
        {
            "trial_id": row["trial_id"],
            "score": float(row[column]),
            "params": {c[3:]: _param(c[3:], row[c]) for c in hyperparameter_columns(trials) if not _missing(row[c])},
        }
        for _, row in ranked.iterrows()
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
    import ray

    from automl.search import start_ray

    run_dir = Path(run_dir)
    if not (run_dir / SPEC_FILE).is_file():
        raise UserError(f"{run_dir}: no search run here (no {SPEC_FILE}); run automl search first")
    spec, info = load_spec(run_dir / SPEC_FILE), read_run_info(run_dir)
    training = spec.training
    epochs = epochs or training.epochs
    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.data.dataset_args())
    if info.get("data_fingerprint") and info["data_fingerprint"] != dataset.fingerprint:
        raise UserError(
            f"{data_dir}: not the data the search {run_dir.name!r} used (fingerprint {dataset.fingerprint}, "
            f"search had {info['data_fingerprint']}); pass the same --data"
        )
    configs = top_configurations(run_dir, top_k)
    members = [
        {"member_id": f"m{i * seeds + s + 1:02d}", "trial_id": c["trial_id"], "search_score": c["score"],
         "seed": training.seed + s, "params": c["params"]}
        for i, c in enumerate(configs)
        for s in range(seeds)
    ]
    console.info(
        f"retraining {len(configs)} configurations x {seeds} seed(s) = {len(members)} members for up to "
        f"{epochs} epochs (early stopping patience {training.early_stopping_patience} on {training.metric})"
    )
    start_ray(address)
    started, wall = utc_now(), time.monotonic()
    settings = spec.search
    with tempfile.TemporaryDirectory(prefix="automl-retrain-") as scratch:
        trainable = tune.with_resources(
            tune.with_parameters(
                train_member, dataset=dataset, training=training, members=members, epochs=epochs, cpus=settings.cpu
            ),
            {"cpu": settings.cpu, "gpu": settings.gpu},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"member": tune.grid_search(list(range(len(members))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent),
            run_config=tune.RunConfig(
                # On a multi-node cluster members must checkpoint to the search's shared storage.
                name="retrain", storage_path=f"{info['storage']}/{run_dir.name}" if info.get("storage") else scratch, verbose=0,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                callbacks=[_MemberLines(members)],
            ),
        )
        try:
            results = tuner.fit()
        finally:
            ray.shutdown()
        unfinished = [members[r.config["member"]]["member_id"] for r in results if r.error is None and r.checkpoint is None]
        if unfinished:
            # Interrupted (Ctrl-C, a stopped job): a partial ensemble would pass for the real one.
            raise UserError(f"{run_dir}: retraining interrupted before {', '.join(unfinished)} finished; nothing written. "
                            f"Run it again: automl retrain {run_dir.name} (or automl run ... --resume)")
        with staged_dir(run_dir / RETRAIN_DIR) as stage:
            rows = []
            for result in results:
                member = members[result.config["member"]]
                if result.error is not None or result.checkpoint is None:
                    console.info(f"member {member['member_id']} failed: {str(result.error).splitlines()[-1] if result.error else 'no model'}")
                    continue
                result.checkpoint.to_directory(str(stage / "members" / member["member_id"]))
                rows.append({k: v for k, v in member.items() if k != "params"}
                            | {f"hp_{k}": v for k, v in member["params"].items()}
                            | {k: v for k, v in result.metrics.items() if k.startswith(("val_", "test_"))}
                            | {"epochs": result.metrics.get("epochs"), "best_epoch": result.metrics.get("best_epoch")})
            if not rows:
                raise UserError(f"{run_dir}: every retrained member failed; see the lines above")
            table = pd.DataFrame(rows).sort_values("member_id")
            atomic_write(stage / MEMBERS_FILE, lambda f: table.to_parquet(f, index=False))
            _, y_val = dataset.subset("val")
            _, y_test = dataset.subset("test")
            split = dataset.table["split"]
            np.savez(stage / LABELS_FILE, y_val=y_val, y_test=y_test,
                     val_ids=dataset.table["image_id"][split == "val"].to_numpy(dtype=str),
                     test_ids=dataset.table["image_id"][split == "test"].to_numpy(dtype=str),
                     class_names=np.array(dataset.class_names))
    write_run_info(run_dir, retrain={"started": started, "ended": utc_now(), "wall_s": round(time.monotonic() - wall, 1),
                                     "top_k": top_k, "seeds": seeds, "epochs": epochs, "members": len(rows)})
    console.info(f"retrained {len(rows)} members into {run_dir / RETRAIN_DIR}")
    return run_dir / RETRAIN_DIR


def train_member(config: dict, dataset: Dataset = None, training=None, members=None, epochs=None, cpus=1.0) -> None:
    """One Tune trial: train a member from scratch, report each epoch, hand back its files as a checkpoint."""
    import keras

    from automl.hparams import ModelConfig
    from automl.trial import configure_tensorflow, fit_candidate, predict_proba

    configure_tensorflow(cpus)
    member = members[config["member"]]

    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            tune.report({k: float(v) for k, v in (logs or {}).items()} | {"epoch": epoch + 1})

    model_config = ModelConfig.from_params(member["params"])
    result = fit_candidate(model_config, dataset, training, callbacks=[Report()], epochs=epochs, seed=member["seed"])
    folder = Path(tempfile.mkdtemp(prefix=f"{member['member_id']}-"))
    result.model.save(folder / "model.keras")
    final = {"epochs": len(result.history), "best_epoch": result.best_epoch}
    for split in ("val", "test"):
        images, labels = dataset.subset(split)
        probs = predict_proba(result.model, images)
        np.save(folder / f"{split}_probs.npy", probs)
        final |= prefixed(classification_metrics(labels, probs, dataset.class_names), split)
    pd.DataFrame(result.history).to_csv(folder / "history.csv", index=False)
    (folder / "member.json").write_text(json.dumps(member | final))
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(folder)))
    shutil.rmtree(folder, ignore_errors=True)


def read_members(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(Path(run_dir) / RETRAIN_DIR / MEMBERS_FILE)


class _MemberLines(tune.Callback):
    """A line per finished member."""

    def __init__(self, members: list[dict]):
        self.members = members

    def on_trial_complete(self, iteration, trials, trial, **info):
        member, result = self.members[trial.config["member"]], trial.last_result or {}
        console.info(
            f"member {member['member_id']} (trial {member['trial_id']}, seed {member['seed']}): "
            f"{result.get('epochs')} epochs, best epoch {result.get('best_epoch')}, "
            f"val balanced accuracy {result.get('val_balanced_accuracy', math.nan):.3f}"
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        console.info(f"member {self.members[trial.config['member']]['member_id']} failed (traceback: {trial.error_file})")


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
