"""Run a study with Ray Tune (Optuna proposes configs for searches): the adapter at the edge.

One Tune trial is one task-stream run of `impress.trainer.run`; it reports after every task with
the per-task checkpoint attached, so a failed trial is retried from its last finished task and an
interrupted study resumes (`impress study resume NAME`) with every trial's results unchanged.

A study chooses on validation: ASHA stops trials on its early-stopping metric and Optuna proposes
on its objectives, both validation metrics (`val/acc/avg`; test ones only with the study's
`choose_on_test`), in the objectives' directions. Every report carries both splits, and so do the
study's records.

Layout of a study's folder `<storage>/<name>/`:

    study.yaml      the validated study (what `resume` runs)
    study.log       everything Ray, Tune and MLflow print while the study runs (the terminal shows
                    the study's own lines, which the log holds too)
    tune/           Tune's experiment: trial states and the searcher state, which holds the Optuna
                    study (so Tune's trials and Optuna's record are saved together)
    checkpoints/    each trial's per-task checkpoint, in a folder named by its config
    optuna.db       the Optuna study exported to SQLite when the study ends (`optuna.load_study`)
    results/        each finished trial's results.json (accuracy matrices, bits, provenance)
    trials.csv      one row per trial: its values, state (complete / stopped early / failed), and
                    every metric of its last report, validation and test
    front.csv, pareto.png   the complete trials non-dominated in the objectives (validation), each
                    objective's test twin beside it, and the plot

The files at the end come from `impress.study_outcome`; the driver's Tune callbacks (progress lines,
MLflow) from `impress.tune_callbacks`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from impress.config import Config
from impress.study import Study, StudyError
from impress.study_log import study_log
from impress.study_outcome import TUNE_DIR, StudyOutcome, finish, text
from impress.tracking import check_reachable, default_tracking_uri
from impress.tune_callbacks import progress_callback, tracking_callback

__all__ = ["run_study", "resume_study", "sync_study", "study_dir", "checkpoint_folder", "config_identity", "has_state"]

CHECKPOINTS_DIR = "checkpoints"
LOG_FILE = "study.log"


def study_dir(storage: str | Path, name: str) -> Path:
    return Path(storage).resolve() / name


# ---------------------------------------------------------------------------------------------
# The trial: runs on a Ray worker


def _trial_values(trial_config: dict[str, Any]) -> dict[str, Any]:
    """A trial's own config values from Tune's trial config (a grid point, or Optuna's proposal and the seed)."""
    return {k: v for k, v in trial_config.items() if k != "point"} | dict(trial_config.get("point", {}))


def config_identity(cfg: Config) -> dict[str, Any]:
    """What a trial computes: the config's fields that differ from their defaults, without device and threads."""
    defaults = Config().to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in ("device", "threads") and v != defaults[k]}


def checkpoint_folder(root: Path, cfg: Config) -> Path:
    """Where a trial of `cfg` keeps its per-task checkpoint: in the study's folder, named by the config.

    NOTE: not Tune's checkpoints. Tune restores a trial from the checkpoint its last experiment
    snapshot names, and snapshots lag behind reports (Ray 2.60 writes one at most every 10 s): a
    study stopped in between repeated every task since that snapshot, or all of them. A folder
    named by what the trial computes is found again whatever Tune's snapshot says, even by a trial
    that Tune re-creates under a new id; device and threads do not change the results.

    Named by the fields that differ from their defaults, so a field added to `Config` later (with a
    default that computes what was computed before) leaves every folder's name as it was."""
    key = hashlib.sha256(json.dumps(config_identity(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / CHECKPOINTS_DIR / key


def _trial(params: dict[str, Any], *, base: dict[str, Any], root: str) -> None:
    """One task-stream run, continued after its last finished task if it ran before. Reports after
    every task, once that task's checkpoint is on disk."""
    from ray import tune

    from impress.trainer import run

    cfg = Config.from_dict({**base, **_trial_values(params)})
    result = run(cfg, lambda metrics: tune.report(metrics), checkpoint_dir=checkpoint_folder(Path(root), cfg))
    result.write(Path(root) / "results" / tune.get_context().get_trial_id())


# ---------------------------------------------------------------------------------------------
# Driver side


def _searcher(study: Study):
    """Optuna, told that a trial stopped early at a task boundary was pruned (never a complete value)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class _StoppedAwareOptunaSearch(OptunaSearch):
        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if result is not None and result.get("tasks_done", 0) < result.get("num_tasks", 0):
                result = None  # NOTE: Ray would otherwise record the partial values as COMPLETE
            super().on_trial_complete(trial_id, result, error)

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if all(m in result for m in ([self.metric] if isinstance(self.metric, str) else self.metric)):
                super().on_trial_result(trial_id, result)  # NOTE: inference metrics come only at the end

    space = {}
    for p in study.search:
        if p.kind == "categorical":
            space[p.name] = optuna.distributions.CategoricalDistribution(list(p.choices))
        elif p.kind == "int":
            space[p.name] = optuna.distributions.IntDistribution(
                int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
            )
        else:
            space[p.name] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    samplers = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=study.sampler_seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=study.sampler_seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=study.sampler_seed),
    }
    metrics = [o.metric for o in study.objectives]
    modes = [o.mode for o in study.objectives]
    return _StoppedAwareOptunaSearch(
        space,
        metric=metrics if len(metrics) > 1 else metrics[0],
        mode=modes if len(modes) > 1 else modes[0],
        sampler=samplers[study.sampler](),
        study_name=study.name,
    )


def _trial_base(study: Study) -> dict[str, Any]:
    """The fixed config every trial starts from: the study's base, made fit to run on a Ray worker."""
    base = dict(study.base)
    if base.get("data_root"):  # trials run in their own folders: resolve against the driver's
        base["data_root"] = str(Path(base["data_root"]).expanduser().resolve())
    if "threads" not in base:  # one trial, its CPUs: no oversubscription of the node's cores
        base["threads"] = max(1, math.floor(study.resources.cpu))
    # A trial computes on what it reserved: CUDA when it asked Ray for a GPU (or a fraction of one),
    # else the CPU, even on a GPU node whose devices belong to other trials.
    device = base.get("device", "auto")
    if device == "auto":
        base["device"] = "cuda" if study.resources.gpu > 0 else "cpu"
    elif isinstance(device, str) and device.startswith("cuda") and study.resources.gpu <= 0:
        raise StudyError(
            f"base.device: {device!r} needs a GPU per trial; set resources.gpu (fractions allowed, e.g. 0.25)"
        )
    return base


def _trial_params(study: Study, trial_config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """MLflow params (the trial's whole config) and naming tags from Tune's trial config."""
    values = _trial_values(trial_config)
    cfg = Config.from_dict({**_trial_base(study), **values})
    # NOTE: a trial's run is named by what distinguishes it within its study, then the seed
    varied = "~".join(f"{k}={text(v)}" for k, v in values.items() if k != "seed")
    return cfg.to_dict(), {
        "impress.run_name": f"{varied}~seed={cfg.seed}" if varied else f"seed={cfg.seed}",
        "seed": str(cfg.seed),
    }


def _tuner(study: Study, root: Path, *, restore: bool, tracker=None, out=sys.stderr):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    base = _trial_base(study)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, base=base, root=str(root)),
        {"cpu": study.resources.cpu, "gpu": study.resources.gpu},
    )
    callbacks = [progress_callback(study, out)]
    if tracker is not None:
        callbacks.append(tracking_callback(tracker, root, lambda config: _trial_params(study, config), out))
    if restore:
        tuner = tune.Tuner.restore(str(root / TUNE_DIR), trainable, resume_unfinished=True, resume_errored=True)
        # NOTE: Tune restores the callbacks pickled at the first start; give it live ones (this process's
        # terminal and MLflow client). There is no public setter for a restored Tuner's RunConfig.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    scheduler = None
    if (es := study.early_stopping) is not None:
        scheduler = ASHAScheduler(
            time_attr="tasks_done",
            metric=es.metric,
            mode=es.mode,
            max_t=study.example_config().num_tasks,
            grace_period=es.grace_tasks,
            reduction_factor=es.reduction_factor,
        )
    if study.kind == "search":
        param_space = {"seed": study.seeds[0]}
        tune_config = tune.TuneConfig(
            search_alg=_searcher(study),
            scheduler=scheduler,
            num_samples=study.trials,
            max_concurrent_trials=study.concurrency,
            reuse_actors=True,
        )
    else:
        param_space = {"point": tune.grid_search(study.grid_points())}
        tune_config = tune.TuneConfig(
            scheduler=scheduler, num_samples=1, max_concurrent_trials=study.concurrency, reuse_actors=True
        )  # NOTE: saves a process start and torch import per trial
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(root),
        failure_config=tune.FailureConfig(max_failures=study.max_failures),
        callbacks=callbacks,
        verbose=0,
    )
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)


def _ray_address(address: str | None) -> str:
    """Where a study's Ray is: the flag, else RAY_ADDRESS (which Ray Jobs sets), else "local", a Ray
    of the study's own rather than whatever `ray start` left running on this machine."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _init_ray(address: str) -> bool:
    # NOTE: we keep one checkpoint per trial, so Tune snapshots its state at every task boundary
    # (what makes resume exact); its warning about that frequency is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # NOTE: inference metrics (FINAL_METRICS) come only with the last task's report, which Tune's
    # check that every report holds the objectives would reject; `Study` already checks that
    # every trial reports every objective.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # NOTE: else Tune prints its own boxes despite verbose=0
    if address == "local":
        # NOTE: Ray starts its workers at nice 15, so any other busy process on the machine starves a
        # study's trials (measured: no task finished in 7 minutes while two shell loops kept both
        # cores busy). The trials are the study's work: they run at the priority of this command.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # NOTE: Ray's metrics exporters answer anyone on 0.0.0.0 without its auth token (measured:
        # tests/faults/test_security.py); a local study has no use for them. Ray also replaces a
        # loopback node address by the machine's routable one unless told it runs on one machine
        # only (its single-machine mode, read when Ray is imported, here and in every process it starts).
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if ray.is_initialized():
        return False
    local = {"_node_ip_address": "127.0.0.1"} if address == "local" else {}  # its HTTP servers: loopback
    ray.init(
        address=address,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
        configure_logging=True,
        **local,
    )
    return True


def _tracker(study: Study, root: Path, uri: str):
    """The study's MLflow writer in the store at `uri`."""
    from impress.provenance import provenance
    from impress.tracking import StudyTracker

    prov = provenance()
    tags = {
        "git_commit": str(prov["git_commit"]),
        "git_dirty": str(prov["git_dirty"]),
        "impress.kind_of_study": study.kind,
        "impress.folder": str(root),
        **{f"version.{k}": str(v) for k, v in prov["versions"].items()},
    }
    return StudyTracker(uri, study_name=study.name, question=study.question, tags=tags)


def _check_data(study: Study) -> None:
    """Every dataset the study's trials read loads here (a missing one is a `DatasetMissingError`
    naming its path), before Ray starts. Only for a study on this machine: a cluster's nodes may
    see other paths than the machine that submits."""
    from impress.streams import SOURCES

    configs = [study.config(**p) for p in study.grid_points()] if study.kind == "grid" else [study.example_config()]
    for p in study.search:  # a searched source or data root: every choice
        if p.name in ("source", "data_root", "download"):
            configs = [c.replace(**{p.name: choice}) for c in configs for choice in p.choices]
    for source, data_root, download in sorted({(c.source, c.data_root, c.download) for c in configs}, key=str):
        if source != "digits":
            SOURCES[source](data_root, download)


def _fit(study: Study, root: Path, *, address: str | None, restore: bool, create=None) -> StudyOutcome:
    """Check everything that can be checked here, then `create()` the study's folder (a new study),
    then run it with Ray's output in the study's log and the study's own lines on the terminal."""
    _trial_base(study)  # a device the trial's resources cannot serve fails here, before Ray starts
    address = _ray_address(address)
    if address == "local":
        _check_data(study)
    # NOTE: resolved before the chdir below, since the default mlflow.db is in the working directory
    uri = default_tracking_uri(study.tracking_uri)
    check_reachable(uri)
    if create is not None:
        create()  # NOTE: only now: a study refused above leaves no folder behind
    with _in_folder(root), study_log(root / LOG_FILE) as out:
        print(f"study {study.name}: {root} (Ray's output: {root / LOG_FILE})", file=out)
        tracker = _tracker(study, root, uri)
        started = _init_ray(address)  # NOTE: the first import of Ray: it reads its settings from the environment
        import ray

        try:
            tuner = _tuner(study, root, restore=restore, tracker=tracker, out=out)
            result_grid = tuner.fit()
            outcome = finish(study, root, result_grid)
        finally:
            if started:
                ray.shutdown()
        try:
            if tracker.missed:  # the store was away for part of the study: fill it in from the study's records
                _sync(study, root, tracker)
            else:
                tracker.finish_study(files=[root / n for n in STUDY_FILES], complete=outcome.complete)
        except Exception as err:  # noqa: BLE001 - the study's own files hold everything
            print(
                f"warning: could not write the study to MLflow ({err}); run `impress study sync {study.name}` later",
                file=out,
            )
    return outcome


@contextlib.contextmanager
def _in_folder(root: Path) -> Iterator[None]:
    """Work in the study's folder while it runs.

    NOTE: a cluster job's driver starts in the job's working_dir, and Ray 2.60 deletes that folder and
    fetches it anew when the driver connects (measured), after which Tune fails in `os.getcwd()`.
    Every path the study uses is absolute."""
    try:
        before = os.getcwd()
    except FileNotFoundError:
        before = None
    os.chdir(root)
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.chdir(before)


STUDY_FILES = ("study.yaml", "trials.csv", "front.csv", "pareto.png")  # logged to the study's parent run


def _sync(study: Study, root: Path, tracker) -> int:
    """Log every trial of the study from its own records, filling whatever MLflow lacks."""
    from impress.tracking import sync_from_tune

    states = {}
    if (root / "trials.csv").exists():
        table = pd.read_csv(root / "trials.csv")
        states = dict(zip(table["trial_id"], table["state"]))
    n = sync_from_tune(tracker, root / TUNE_DIR, root / "results", lambda c: _trial_params(study, c), states)
    tracker.finish_study(files=[root / n for n in STUDY_FILES], complete=bool(states))
    tracker.missed = False
    return n


def sync_study(name: str, *, storage: str | Path = "runs/studies") -> int:
    """Write a study's trials to MLflow from its own records (idempotent). Returns trials synced."""
    root = study_dir(storage, name)
    if not (root / "study.yaml").exists():
        raise StudyError(f"no study {name!r} under {Path(storage).resolve()} (expected {root / 'study.yaml'})")
    study = Study.from_yaml(root / "study.yaml")
    return _sync(study, root, _tracker(study, root, default_tracking_uri(study.tracking_uri)))


def run_study(study: Study, *, storage: str | Path = "runs/studies", address: str | None = None) -> StudyOutcome:
    """Run a study from the start. Its folder must not hold an earlier run (resume that instead)."""
    root = study_dir(storage, study.name)
    if has_state(root):
        raise StudyError(
            f"study {study.name!r} already has results in {root}; continue it with "
            f"`impress study resume {study.name} --storage {Path(storage)}` or remove the folder"
        )

    def create() -> None:
        (root / "results").mkdir(parents=True, exist_ok=True)
        (root / "study.yaml").write_text(yaml.safe_dump(_as_yaml(study), sort_keys=False))

    return _fit(study, root, address=address, restore=False, create=create)


def resume_study(name: str, *, storage: str | Path = "runs/studies", address: str | None = None) -> StudyOutcome:
    """Continue an interrupted study: finished trials stay, unfinished ones continue from their checkpoints."""
    root = study_dir(storage, name)
    if not (root / "study.yaml").exists():
        raise StudyError(f"no study {name!r} under {Path(storage).resolve()} (expected {root / 'study.yaml'})")
    study = Study.from_yaml(root / "study.yaml")
    if not has_state(root):
        raise StudyError(
            f"study {name!r} in {root} stopped before Tune saved its state, so there is nothing to resume; "
            f"start it again with `impress study run {root / 'study.yaml'} --storage {Path(storage)}`"
        )
    return _fit(study, root, address=address, restore=True)


def has_state(root: Path) -> bool:
    """Whether the study in `root` got as far as Tune saving its experiment (what resume restores)."""
    return any((root / TUNE_DIR).glob("experiment_state-*.json"))


def _as_yaml(study: Study) -> dict[str, Any]:
    """The study as a study file (round-trips through `Study.from_dict`, `choose_on_test` included:
    a resumed study admits the test objectives it started with)."""
    d = asdict(study)
    d["search"] = {
        p["name"]: {k: v for k, v in p.items() if k != "name" and v not in (None, (), False)} | {"type": p["kind"]}
        for p in d["search"]
    }
    for spec in d["search"].values():
        spec.pop("kind", None)
        if "choices" in spec:
            spec["choices"] = list(spec["choices"])
    d["grid"] = {k: list(v) for k, v in d["grid"].items()}
    d["cases"] = [dict(c) for c in d["cases"]]
    d["objectives"] = [dict(o) for o in d["objectives"]]
    d["seeds"] = list(d["seeds"])
    if d["early_stopping"] is None:
        del d["early_stopping"]
    if d["tracking_uri"] is None:
        del d["tracking_uri"]
    return d
