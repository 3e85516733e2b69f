"""``automl retrain``: a search's top-K configurations trained from scratch, as parallel Ray Tune trials.

Each member (a configuration and a seed) trains for the full epoch budget with early stopping on
the run's metric and the best weights restored, then hands its model and its validation and test
probabilities back to the driver as a Tune checkpoint, so members trained on other nodes of a
cluster land in the run folder too::

    RESULTS/NAME/retrain/members.parquet     one row per member: source trial, seed, epochs, val_*/test_*
    RESULTS/NAME/retrain/labels.npz          y_val, y_test and their image ids
    RESULTS/NAME/retrain/members/mNN/        model.keras, {val,test}_probs[_TTA].npy, history.csv, member.json
    RESULTS/NAME/refit/                      the same for ``--refit`` (no val: it is in the training set)

Each member's probabilities are stored plain and averaged over every test-time augmentation mode
(:mod:`automl.posthoc`), so the ensemble stage chooses the mode without a model. Each member's row also
holds ``class_prior`` (its training split's class shares) and ``class_mix`` (the effective class mix its
imbalance setting made it learn, :func:`automl.trial.expected_class_mix`): the prior correction needs
nothing else. Test probabilities are stored for the final evaluation only; nothing here or in the
ensemble chooses anything by them.

``--refit`` (:func:`refit`) trains the ensemble's members again from scratch on train+val, each for the
number of epochs its validation run chose (``best_epoch``) at that run's learning rates, epoch by epoch:
the shipped model learns from 85% of the data while the test split stays untouched.
"""

from __future__ import annotations

import json
import math
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
from automl.hparams import ModelConfig, parse_name
from automl.layout import (HP_PREFIX, IMAGE_SIZE, PARAMETERS, RunLayout, best_column, hp_column, hyperparameter_name,
                           size_text)
from automl.metrics import classification_metrics, prefixed
from automl.objective import Objective
from automl.posthoc import predict_modes, tta_modes
from automl.remote import join
from automl.spec import Spec, load_spec
from automl.store import missing, utc_now, write_run_info
from automl.trial import epoch_line, expected_class_mix
from automl.weights import require_weights


def top_configurations(run_dir: Path, top_k: int | None) -> list[dict]:
    """The ``top_k`` best finished trials by the run's objective (all of them, best first, when None):
    ``{trial_id, score, params}``."""
    run = RunLayout(run_dir)
    objective, trials = Objective.from_record(run.read_info(required=True)), run.read_trials()
    column = best_column(objective.name)
    if column not in trials or "status" not in trials:
        raise UserError(f"{run.trials}: no trial finished an epoch; nothing to retrain")
    usable = trials[trials["status"].isin(["completed", "pruned"]) & trials[column].notna()]
    if usable.empty:
        raise UserError(f"{run.root}: no trial finished an epoch; nothing to retrain")
    return [
        {"trial_id": row["trial_id"], "score": float(row[column]), "params": _params(row)}
        for _, row in objective.sort(usable, column).head(len(usable) if top_k is None else top_k).iterrows()
    ]


def trainable_at(configs: list[dict], spec: Spec, dataset: Dataset, top_k: int) -> list[dict]:
    """The first ``top_k`` of ``configs`` (best first) that can be built at the dataset's image size: a search at a
    smaller ``search.image_size`` can rank first a candidate whose flatten head grows past
    ``training.max_parameters`` at the larger size. Those left out are named on the console."""
    from automl.errors import SpecError
    from automl.trial import build_candidate

    kept, left_out = [], []
    for config in configs:
        if len(kept) == top_k:
            break
        try:
            build_candidate(ModelConfig.from_params(config["params"]), dataset, spec.training)
        except SpecError as exc:
            left_out.append(f"trial {config['trial_id']} ({str(exc).partition(': ')[2] or exc})")
            continue
        kept.append(config)
    if left_out:
        console.info(f"left out {len(left_out)} of the search's best configurations that cannot be trained at "
                     f"{size_text(dataset.image_size)}: {'; '.join(left_out)}")
    return kept


def _params(row) -> dict:
    """The hyperparameters of a table row (``hp_*`` columns), in their own types, conditionals left out when absent."""
    return {hyperparameter_name(c): _param(hyperparameter_name(c), row[c])
            for c in row.index if c.startswith(HP_PREFIX) and not missing(row[c])}


def retrain(
    run_dir: Path,
    data_dir: Path,
    top_k: int | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    address: str | None = None,
    skip_bad_images: bool = False,
    cache_dir: Path | None = None,
) -> Path:
    """Retrain the run's ``top_k`` configurations with ``seeds`` seeds each, for up to ``epochs`` epochs (None: the
    run spec's ``retrain.top_k``, ``retrain.seeds`` and ``training.epochs``); returns the retrain folder."""
    run = RunLayout(run_dir)
    spec, info, dataset = _run_data(run, data_dir, skip_bad_images, cache_dir)
    top_k, seeds, epochs = top_k or spec.retrain.top_k, seeds or spec.retrain.seeds, epochs or spec.training.epochs
    if tuple(info["image_size"]) == dataset.image_size:
        configs = top_configurations(run.root, top_k)  # the search built each of them at this size already
    else:
        configs = trainable_at(top_configurations(run.root, None), spec, dataset, top_k)
    members = [
        {"member_id": f"m{i * seeds + s + 1:02d}", "trial_id": c["trial_id"], "search_score": c["score"],
         "seed": spec.training.seed + s, "params": c["params"]}
        for i, c in enumerate(configs)
        for s in range(seeds)
    ]
    require_weights(spec, [m["params"] for m in members])  # before any trial: ImageNet weights once, or one line
    console.info(
        f"retraining {len(configs)} configurations x {seeds} seed(s) = {len(members)} members for up to "
        f"{epochs} epochs (early stopping patience {spec.training.early_stopping_patience} on {spec.objective}) "
        f"at {size_text(dataset.image_size)}"
        + ("" if tuple(info["image_size"]) == dataset.image_size else f" (searched at {size_text(info['image_size'])})")
    )
    started, wall = utc_now(), time.monotonic()
    results = _train_members(spec, dataset, members, epochs, address, info.get("storage"), run)
    rows = _collect(run, dataset, members, results)
    _forget_members_experiment(info.get("storage"), run, "retrain")
    write_run_info(run.root, retrain={"started": started, "ended": utc_now(),
                                      "wall_s": round(time.monotonic() - wall, 1),
                                      "top_k": top_k, "seeds": seeds, "epochs": epochs, "members": rows,
                                      "image_size": list(dataset.image_size)})
    console.info(f"retrained {rows} members into {run.retrain}")
    return run.retrain


def refit(
    run_dir: Path,
    data_dir: Path,
    address: str | None = None,
    skip_bad_images: bool = False,
    cache_dir: Path | None = None,
) -> Path:
    """Train the ensemble's members (weight > 0) again from scratch on train+val; returns the refit folder.

    Each keeps its configuration and seed and trains for its validation run's ``best_epoch`` epochs at
    that run's learning rate per epoch (``history.csv``), since with val inside the training set nothing
    is left to stop on. The ensemble's weights, TTA mode, temperature and decision carry over
    (:mod:`automl.ensemble` reports the refit ensemble with them, :mod:`automl.export` ships it).
    """
    run = RunLayout(run_dir)
    weights = run.read_ensemble()["weights"]  # before loading data: a run without an ensemble fails at once
    spec, info, dataset = _run_data(run, data_dir, skip_bad_images, cache_dir)
    table = run.read_members().set_index("member_id")
    members = [_refit_member(run, member_id, table) for member_id, w in weights.items() if w > 0]
    images = int(dataset.with_train_and_val().class_counts("train").sum())
    console.info(f"refitting {len(members)} members on train+val ({images} images) for "
                 + ", ".join(f"{m['member_id']} {len(m['learning_rates'])}" for m in members)
                 + " epochs (each member's best epoch on validation)")
    started, wall = utc_now(), time.monotonic()
    results = _train_members(spec, dataset, members, None, address, info.get("storage"), run, stage="refit")
    rows = _collect(run, dataset, members, results, refit=True)
    _forget_members_experiment(info.get("storage"), run, "refit")
    write_run_info(run.root, refit={"started": started, "ended": utc_now(), "wall_s": round(time.monotonic() - wall, 1),
                                    "members": rows, "retrain_ended": (info.get("retrain") or {}).get("ended")})
    console.info(f"refit {rows} members into {run.refit}")
    return run.refit


def _run_data(run: RunLayout, data_dir: Path, skip_bad_images: bool, cache_dir: Path | None):
    """The run's spec, its record and its dataset, checked to be the data the search used. This driver process
    only schedules the members: its TensorFlow keeps off the GPUs they train on."""
    from automl.devices import keep_off_gpus

    keep_off_gpus()
    if not run.spec.is_file():
        raise UserError(f"{run.root}: no search run here (no {run.spec.name}); run automl search first")
    spec, info = load_spec(run.spec), run.read_info(required=True)
    dataset = load_dataset(data_dir, skip_bad_images=skip_bad_images, cache_dir=cache_dir, **spec.data.dataset_args())
    if info.get("data_fingerprint") and info["data_fingerprint"] != dataset.fingerprint:
        raise UserError(
            f"{data_dir}: not the data the search {run.name!r} used (fingerprint {dataset.fingerprint}, "
            f"search had {info['data_fingerprint']}); pass the same --data"
        )
    return spec, info, dataset


def _refit_member(run: RunLayout, member_id: str, table: pd.DataFrame) -> dict:
    """A member to refit: configuration, seed, and its validation run's learning rates up to its best epoch."""
    if member_id not in table.index:
        raise UserError(f"{run.ensemble_json}: member {member_id} is not in {run.members}; "
                        f"run automl ensemble {run.name} again")
    row = table.loc[member_id]
    best = row.get("best_epoch")
    if missing(best) or int(best) < 1:
        raise UserError(f"{run.members}: member {member_id} has no best epoch; run automl retrain {run.name} again")
    params = _params(row)
    history = RunLayout.member_history(run.member(member_id))
    rates = pd.read_csv(history)["learning_rate"].tolist()[: int(best)] if history.is_file() else []
    if len(rates) < int(best) or any(missing(r) for r in rates):
        rates = [ModelConfig.from_params(params).learning_rate] * int(best)  # no schedule recorded: the initial rate
    return {"member_id": member_id, "trial_id": row["trial_id"], "search_score": row.get("search_score"),
            "seed": int(row["seed"]), "params": params, "learning_rates": rates}


def _members_storage(storage: str | None, run: RunLayout) -> str:
    """Where the members' Tune experiment (and its plan) keeps per-epoch checkpoints until every member has finished:
    the run folder, or ``STORAGE/NAME`` on the search's shared storage (a URI's options kept at its end)."""
    return join(storage, run.name) if storage else str(run.root.resolve())


def _members_paths(storage: str | None, run: RunLayout, stage: str) -> tuple[str, str]:
    """The members' experiment and its plan file."""
    parent, name = _members_storage(storage, run), RunLayout.members_experiment(stage)
    return join(parent, name), join(parent, f"{name}.plan.json")


def _train_members(spec: Spec, dataset: Dataset, members: list[dict], epochs: int | None, address: str | None,
                   storage: str | None, run: RunLayout, stage: str = "retrain"):
    """Every member as a Ray Tune trial, each checkpointed every epoch; the results, or one line if interrupted.

    An interrupted retrain of the same members (same configurations, seeds and epochs: the plan) goes on where each
    member stopped: finished members are kept, the others resume from their last epoch (:class:`CandidateFit`).
    """
    import ray
    from pyarrow import fs

    from automl.devices import require_cluster_gpus
    from automl.search import check_shared_storage, ray_on_this_machine, start_ray

    settings = spec.search
    start_ray(address)
    check_shared_storage(_members_storage(storage, run))
    require_cluster_gpus(settings.cpu, settings.gpu)  # before any member: TensorFlow sees the GPUs Ray gives
    dataset = dataset.shared_by_file(ray_on_this_machine())  # as a search ships it (automl.search._ray)
    trainable = tune.with_resources(
        tune.with_parameters(train_member, dataset=dataset, spec=spec, members=members, epochs=epochs,
                             cpus=settings.cpu, gpus=settings.gpu),
        {"cpu": settings.cpu, "gpu": settings.gpu},
    )
    experiment, plan_file = _members_paths(storage, run, stage)
    plan = json.dumps({"members": members, "epochs": epochs, "image_size": list(dataset.image_size)},
                      sort_keys=True, default=str)
    plan_fs, plan_path = fs.FileSystem.from_uri(plan_file)
    if tune.Tuner.can_restore(experiment) and _read_text(plan_fs, plan_path) == plan:
        console.info(f"{stage}: going on from each member's last finished epoch ({experiment})")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        _forget_members_experiment(storage, run, stage)  # another plan's checkpoints are of no use
        with plan_fs.open_output_stream(plan_path) as f:
            f.write(plan.encode())
        tuner = tune.Tuner(
            trainable,
            param_space={"member": tune.grid_search(list(range(len(members))))},
            tune_config=tune.TuneConfig(max_concurrent_trials=settings.max_concurrent),
            run_config=tune.RunConfig(
                name=RunLayout.members_experiment(stage), storage_path=_members_storage(storage, run), verbose=0,
                failure_config=tune.FailureConfig(max_failures=settings.max_failures),
                # The last checkpoint is all a member resumes from, and its final one is what it hands back.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[_MemberLines(members, spec.objective, epochs)],
            ),
        )
    try:
        results = tuner.fit()
    finally:
        ray.shutdown()
    unfinished = [members[r.config["member"]]["member_id"] for r in results
                  if r.error is None and not (r.metrics or {}).get(MEMBER_DONE)]
    if unfinished:
        # Interrupted (Ctrl-C, a stopped job): a partial ensemble would pass for the real one.
        again = f"automl retrain {run.name}" + (" --refit" if stage == "refit" else " (or automl run ... --resume)")
        raise UserError(f"{stage} interrupted before {', '.join(unfinished)} finished; nothing written. "
                        f"Run it again to go on from each member's last epoch: {again}")
    return results


def _read_text(filesystem, path: str) -> str | None:
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read().decode()
    except (OSError, FileNotFoundError):
        return None


def _forget_members_experiment(storage: str | None, run: RunLayout, stage: str) -> None:
    """Delete the members' experiment and its plan (its members collected, or a different plan starting)."""
    from pyarrow import fs

    for target in _members_paths(storage, run, stage):
        filesystem, path = fs.FileSystem.from_uri(target)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            filesystem.delete_dir(path)
        elif info.type == fs.FileType.File:
            filesystem.delete_file(path)


def _collect(run: RunLayout, dataset: Dataset, members: list[dict], results, refit: bool = False) -> int:
    """Copy the members' checkpoints into ``retrain/`` (or ``refit/``) with their table, and for the
    retrain the split's labels; returns the count."""
    root = run.refit if refit else run.retrain
    counts = (dataset.with_train_and_val() if refit else dataset).class_counts("train")
    with staged_dir(root) as stage:
        rows = []
        for result in results:
            member = members[result.config["member"]]
            if result.error is not None or not (result.metrics or {}).get(MEMBER_DONE):
                reason = str(result.error).splitlines()[-1] if result.error else "no model"
                console.info(f"member {member['member_id']} failed: {reason}")
                continue
            result.checkpoint.to_directory(str(stage / run.member(member["member_id"], refit).relative_to(root)))
            rows.append(_member_row(member, result.metrics, counts))
        if not rows:
            raise UserError(f"{run.root}: every {'refit' if refit else 'retrained'} member failed; see the lines above")
        table = pd.DataFrame(rows).sort_values("member_id")
        table_path = run.refit_members if refit else run.members
        atomic_write(stage / table_path.relative_to(root), lambda f: table.to_parquet(f, index=False))
        if not refit:
            split = dataset.table["split"]
            np.savez(stage / run.labels.relative_to(root),
                     y_val=dataset.labels("val"), y_test=dataset.labels("test"),
                     val_ids=dataset.table["image_id"][split == "val"].to_numpy(dtype=str),
                     test_ids=dataset.table["image_id"][split == "test"].to_numpy(dtype=str),
                     class_names=np.array(dataset.class_names))
    return len(rows)


def _member_row(member: dict, metrics: dict, counts: np.ndarray) -> dict:
    """A member's row of ``members.parquet``: identity, ``hp_*``, scores, epochs, parameters, training prior and
    effective mix."""
    config = ModelConfig.from_params(member["params"])
    return ({k: v for k, v in member.items() if k not in ("params", "learning_rates")}
            | {hp_column(k): v for k, v in member["params"].items()}
            | {k: v for k, v in metrics.items() if k.startswith(("val_", "test_"))}
            | {"epochs": metrics.get("epochs"), "best_epoch": metrics.get("best_epoch"),
               PARAMETERS: metrics.get(PARAMETERS), IMAGE_SIZE: size_text(metrics.get(IMAGE_SIZE) or []),
               "class_prior": (counts / counts.sum()).tolist(),
               "class_mix": expected_class_mix(counts, config.imbalance, config.oversample_to).tolist()})


#: In a member's final report: it finished, and its checkpoint is the member's folder (not an epoch's).
MEMBER_DONE = "member_done"


def train_member(config: dict, dataset: Dataset = None, spec: Spec = None, members=None, epochs=None, cpus=1.0,
                 gpus=0.0) -> None:
    """One Tune trial: train a member from scratch (a refit when it has ``learning_rates``: on train+val, for
    exactly those epochs), report and checkpoint each epoch, hand back its files as the last checkpoint. A trial
    restored from an epoch's checkpoint goes on from it."""
    import keras
    import ray

    from automl.trial import CandidateFit, configure_tensorflow

    configure_tensorflow(cpus, gpus, ray.get_gpu_ids())  # a GPU TensorFlow cannot see fails the member here
    member = members[config["member"]]
    rates = member.get("learning_rates")
    trained_on = dataset if rates is None else dataset.with_train_and_val()
    fit = CandidateFit(ModelConfig.from_params(member["params"]), trained_on, spec.objective, spec.training,
                       epochs=epochs, seed=member["seed"], learning_rates=rates)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            if RunLayout.member_record(Path(folder)).is_file():  # it had finished: hand the same folder back
                tune.report(json.loads(RunLayout.member_record(Path(folder)).read_text()) | {MEMBER_DONE: True},
                            checkpoint=checkpoint)
                return
            fit.restore(Path(folder))

    class Report(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            with tempfile.TemporaryDirectory(prefix=f"{member['member_id']}-epoch-") as folder:
                fit.save(Path(folder))
                tune.report({k: float(v) for k, v in (logs or {}).items()}
                            | {"epoch": epoch + 1, "epoch_s": time.monotonic() - self.started},
                            checkpoint=tune.Checkpoint.from_directory(folder))

    result = fit.run(callbacks=[Report()])
    with tempfile.TemporaryDirectory(prefix=f"{member['member_id']}-") as folder:
        folder = Path(folder)
        result.model.save(RunLayout.member_model(folder))
        final = ({"epochs": len(result.history), PARAMETERS: int(result.model.count_params()),
                  IMAGE_SIZE: list(trained_on.image_size)}
                 | ({"best_epoch": result.best_epoch} if rates is None else {}))
        final |= _score_member(result.model, trained_on, folder)
        pd.DataFrame(result.history).to_csv(RunLayout.member_history(folder), index=False)
        RunLayout.member_record(folder).write_text(json.dumps(member | final))
        tune.report(final | {MEMBER_DONE: True}, checkpoint=tune.Checkpoint.from_directory(str(folder)))


def _score_member(model, dataset: Dataset, folder: Path) -> dict:
    """Save the member's probabilities on val and test (those that have images), plain and for every TTA mode
    its input size allows; return its plain metrics, ``val_*`` and ``test_*``."""
    from automl.trial import gathered, predict_proba

    metrics, modes = {}, tta_modes(dataset.image_size)
    for split in ("val", "test"):
        labels = dataset.labels(split)
        if not len(labels):
            continue  # a refit's val split is inside its training set
        # Batch by batch: every view of a whole split at once would be several copies of it.
        parts = [predict_modes(lambda x: predict_proba(model, x), batch, modes)
                 for batch in gathered(dataset.images, dataset.rows(split))]
        by_mode = {mode: np.concatenate([part[mode] for part in parts]) for mode in modes}
        for mode, probs in by_mode.items():
            np.save(RunLayout.member_probs(folder, split, mode), probs)
        metrics |= prefixed(classification_metrics(labels, by_mode["none"], dataset.class_names), split)
    return metrics


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
        rates = self.members[trial.config["member"]].get("learning_rates")
        if rates is not None:  # a refit: no validation to show
            console.info(f"member {member} refit epoch {int(result['epoch']):>3}/{len(rates)}  "
                         f"loss {result.get('loss', math.nan):.3f}  lr {rates[int(result['epoch']) - 1]:.3g}  "
                         f"({result['epoch_s']:.1f}s)")
            return
        best = self.best.get(member, (math.nan, 0))
        if self.objective.better(result.get(self.objective.name), best[0]):
            best = self.best[member] = (float(result[self.objective.name]), int(result["epoch"]))
        console.info(f"member {member} " + epoch_line(int(result["epoch"]), self.epochs, result, result["epoch_s"],
                                                       self.objective, best))

    def on_trial_complete(self, iteration, trials, trial, **info):
        member, result = self.members[trial.config["member"]], trial.last_result or {}
        if member.get("learning_rates") is not None:
            console.info(f"member {member['member_id']} refit on train+val: {result.get('epochs')} epochs, "
                         f"test {self.objective.key} {result.get('test_' + self.objective.key, math.nan):.3f}")
            return
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
