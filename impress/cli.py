"""`impress` command line: `impress run [config.yaml] [--key value ...]`.

Every config field is a flag (`--m 20`, `--widths 256,256`, `--alpha_epochs null`); flags override
the YAML file. Results go to `<out>/<run name>/`: results.json, acc_matrix.csv (test),
val_acc_matrix.csv (validation), config.yaml and the per-task checkpoint that `--resume` continues
from. The progress bar and the table at the end show test accuracy, the headline; the table shows
each metric's validation value beside it.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from impress.config import Config, ConfigError
from impress.folders import FolderNameError, folder_name
from impress.jobs import ClusterError
from impress.metrics import split_of
from impress.run_flags import flags_help, parse_overrides
from impress.study import StudyError
from impress.tracking import TrackingError

__all__ = ["main"]


class _Progress:
    """A bar over tasks whose description follows the current phase and epoch."""

    def __init__(self, num_tasks: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=num_tasks, unit="task", dynamic_ncols=True, file=sys.stderr)

    def epoch(self, event: dict) -> None:
        self.bar.set_description(
            f"task {event['task']:>3} {event['phase']} {event['epoch']}/{event['epochs']}", refresh=False
        )
        self.bar.set_postfix(loss=f"{event['loss']:.3f}", refresh=False)
        self.bar.update(0)  # redraws at most every `mininterval` seconds

    def task(self, metrics: dict) -> None:
        self.bar.update(1)
        just = metrics[f"test/acc/task_{metrics['step']:03d}"]  # the task just learned, on its test split
        self.bar.set_postfix({"test/acc/avg": f"{metrics['test/acc/avg']:.3f}", "just_trained": f"{just:.3f}"})

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _num(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _table(result) -> str:
    """Per task its final and just-trained accuracy, then every metric: test (the headline), and
    validation beside it (what studies choose on); then bits and time."""
    R, V = result.acc_matrix, result.val_acc_matrix
    T = len(R)
    lines = [
        f"{'':<22}  {' test ':-^29}  {' validation ':-^29}",
        f"{'task':<22}" + "  acc(final)  acc(just trained)" * 2,
    ]
    lines.append("-" * len(lines[1]))
    for j, name in enumerate(result.stream["task_names"]):
        lines.append(f"{name:<22}{_num(R[T - 1][j]):>12}{_num(R[j][j]):>19}{_num(V[T - 1][j]):>12}{_num(V[j][j]):>19}")
    lines.append("-" * len(lines[1]))
    lines.append(f"{'':<22}{'test':>10}{'validation':>12}")
    names = [k.split("/", 1)[1] for k in result.metrics if split_of(k) == "test"]  # the trainer's order
    for name in names:
        lines.append(
            f"{name:<22}{_num(result.metrics[f'test/{name}']):>10}{_num(result.metrics.get(f'val/{name}')):>12}"
        )
    for key, value in result.metrics.items():  # no data split (inference time)
        if split_of(key) is None:
            lines.append(f"{key:<22}{_num(value):>10}")
    o = result.overhead
    lines += [
        f"{'bits/per_task':<22}{o['per_task_bits']:>10,}",
        f"{'bits/one_time':<22}{o['one_time_bits']:>10,}",
        f"{'bits/total':<22}{o['total_bits']:>10,}   (SupSup: {o['supsup_total_bits']:,})",
        f"{'break-even tasks':<22}{str(o['break_even_tasks']):>10}",
        f"{'seconds':<22}{sum(result.task_seconds):>10.1f}",
    ]
    return "\n".join(lines)


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    cfg = Config.from_yaml(args.config, overrides) if args.config else Config.from_dict(overrides)
    out = Path(args.out) / (folder_name(args.name, field="--name") if args.name is not None else cfg.run_name())
    ckpt = out / "checkpoint"
    if not args.resume and (ckpt / "checkpoint.pt").exists():
        print(
            f"error: {out} holds an earlier run; pass --resume to continue it or choose another --out/--name",
            file=sys.stderr,
        )
        return 2
    # NOTE: the trainer is imported only by this command (validating a config loads the method registry,
    # and torch with it: ~2 s)
    from impress.checkpoint import CheckpointError
    from impress.trainer import run

    out.mkdir(parents=True, exist_ok=True)
    if not (ckpt / "checkpoint.pt").exists():  # on --resume, the run checks the config against the checkpoint
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    print(f"run {out}", file=sys.stderr)
    try:
        with _Progress(cfg.num_tasks) as bar:
            result = run(cfg, report=bar.task, progress=bar.epoch, checkpoint_dir=ckpt)
    except CheckpointError as err:  # a damaged checkpoint, or one another config wrote
        print(f"error: {err}", file=sys.stderr)
        return 2
    result.write(out)
    print(_table(result))
    print(f"\nwrote results.json, acc_matrix.csv (test) and val_acc_matrix.csv (validation) in {out}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from impress.study import Study

    if args.seeds is not None and args.action != "confirm":
        raise StudyError(f"--seeds: only `impress study confirm` takes seeds; `{args.action}` runs the study's own")
    if args.action == "run":
        study = Study.from_yaml(args.target)  # a malformed file fails here, before Ray starts
        if args.trials is not None:  # ... and so does a flag, checked as the file's value is
            study = study.with_trials(args.trials, where="--trials")
    else:
        folder_name(args.target, field="study name")
    from impress.study_outcome import front_summary
    from impress.tuner import resume_study, run_study, study_dir, sync_study

    if args.action == "sync":
        n = sync_study(args.target, storage=args.storage)
        print(f"synced {n} trials of {args.target} to MLflow")
        return 0
    if args.action == "confirm":
        return _confirm(args)
    if args.action == "run":
        folder = study_dir(args.storage, study.name)
        conflict = (
            f"{args.target} differs from the study of that name in {folder}; rename the study or remove the folder"
        )
        if args.resume:
            outcome = _resume_or_run(study, args, conflict=conflict)
        else:
            outcome = run_study(study, storage=args.storage, address=args.address)
    else:
        outcome = resume_study(args.target, storage=args.storage, address=args.address)
        study = Study.from_yaml(outcome.root / "study.yaml")
    print(front_summary(outcome, study))
    print(
        f"\nwrote {outcome.root / 'trials.csv'}, {outcome.root / 'front.csv'}"
        + (f", {outcome.root / 'pareto.png'}" if (outcome.root / "pareto.png").exists() else "")
    )
    if not outcome.complete:
        print(
            f"\nthe study did not finish; continue it with: impress study resume {study.name} --storage {args.storage}",
            file=sys.stderr,
        )
        return 1
    return 0


def _resume_or_run(study, args: argparse.Namespace, *, conflict: str):
    """Continue `study` where its folder holds its saved state, else run it afresh (a study stopped
    before Tune saved any state, e.g. a cluster job stopped at once, starts again). A folder of
    another study of that name is refused with `conflict`."""
    from impress.study import Study
    from impress.tuner import has_state, resume_study, run_study, study_dir

    folder = study_dir(args.storage, study.name)
    if (folder / "study.yaml").exists() and has_state(folder):
        if Study.from_yaml(folder / "study.yaml") != study:
            raise StudyError(conflict)
        return resume_study(study.name, storage=args.storage, address=args.address)
    return run_study(study, storage=args.storage, address=args.address)


def _confirm(args: argparse.Namespace) -> int:
    import pandas as pd

    from impress.confirm import comparison, comparison_text, confirm_study, fresh_seeds, front_cases
    from impress.study import Study
    from impress.study_outcome import front_summary
    from impress.tuner import study_dir

    root = study_dir(args.storage, args.target)
    for needed in ("study.yaml", "trials.csv"):
        if not (root / needed).exists():
            raise StudyError(f"no finished study {args.target!r} under {Path(args.storage).resolve()} (no {needed})")
    source = Study.from_yaml(root / "study.yaml")
    chosen = front_cases(source, pd.read_csv(root / "trials.csv"))
    seeds = args.seeds if args.seeds is not None else fresh_seeds(source, 3)
    if len(set(seeds)) != len(seeds):
        raise StudyError(f"--seeds: {seeds} repeats a seed; each seed runs once")
    study = confirm_study(source, list(chosen["case"]), seeds)
    print(f"confirming {len(chosen)} front configs of {source.name} with seeds {seeds} as study {study.name}")
    conflict = (
        f"{study_dir(args.storage, study.name)} holds a confirmation of other configs or seeds (the study's "
        f"front or --seeds changed since); remove that folder to confirm afresh"
    )
    outcome = _resume_or_run(study, args, conflict=conflict)
    table = comparison(chosen, outcome.configs, source)
    table.to_csv(outcome.root / "confirmed.csv", index=False)
    try:  # beside the confirmation's own trials and front in MLflow
        from impress.records import load_study, log_files
        from impress.tracking import default_tracking_uri

        records = load_study(study.name, uri=default_tracking_uri(study.tracking_uri))
        log_files(records, [outcome.root / "confirmed.csv"], artifact_path="confirm")
    except Exception as err:  # noqa: BLE001 - the study's folder holds the file
        print(f"warning: could not attach confirmed.csv to the study's MLflow run ({err})", file=sys.stderr)
    print(front_summary(outcome, study))
    print("\n" + comparison_text(table, source, seeds))
    print(f"\nwrote {outcome.root / 'confirmed.csv'}, {outcome.root / 'trials.csv'}, {outcome.root / 'front.csv'}")
    if not outcome.complete:
        print(
            f"\nthe confirmation did not finish; continue it with: impress study confirm {source.name} "
            f"--storage {args.storage}" + (f" --seeds {' '.join(map(str, seeds))}" if args.seeds else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    import os

    from impress.records import existing_store

    # NOTE: the UI only shows what studies tracked: started over no store, MLflow would create an
    # empty one wherever it was started and show nothing, so a missing store is an error as for `pareto`
    if args.study is not None:
        folder_name(args.study, field="--study")
    uri = existing_store(args.store)
    url = f"http://{args.host}:{args.port}/"
    if args.study:
        from mlflow.tracking import MlflowClient

        experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(args.study)
        if experiment is None:
            raise TrackingError(f"no study {args.study!r} in {uri}")
        url += f"#/experiments/{experiment.experiment_id}/runs"
    print(f"MLflow UI for {uri}\n  {url}\n(Ctrl-C stops it)", flush=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    # MLflow's job runner (eight more processes, about 1.3 GB) serves GenAI jobs that studies never
    # queue; a user who wants it sets the variable themselves
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)  # the server replaces this process; signals reach it directly
    return 0  # pragma: no cover


def _cmd_cluster(args: argparse.Namespace) -> int:
    from impress import jobs

    if args.command == "submit":
        return jobs.submit(
            args.study,
            address=args.address,
            storage=args.storage,
            working_dir=args.working_dir,
            tracking_uri=args.tracking_uri,
            follow=not args.no_wait,
        )
    folder_name(args.name, field="study name")
    if args.command == "status":
        return jobs.status(args.name, address=args.address, follow=args.follow)
    return jobs.stop(args.name, address=args.address, wait=args.wait)


def _seconds(value: str) -> float:
    """A positive, finite number of seconds (an argparse type: a bad value is a usage error)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _cluster_parsers(sub) -> None:
    """`impress submit | status | stop`: a study as a Ray job on a cluster (impress/jobs.py)."""
    import os

    from impress.jobs import DEFAULT_ADDRESS, DEFAULT_STORAGE

    address = os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS)
    help_address = f"the head's Ray Jobs API (default: $RAY_API_SERVER_ADDRESS, else {DEFAULT_ADDRESS})"
    c = sub.add_parser("submit", help="run a study on a Ray cluster (resumes it if it ran before)")
    c.add_argument("study", help="study file, inside the working directory that is uploaded")
    c.add_argument("--address", default=address, help=help_address)
    c.add_argument(
        "--storage", default=DEFAULT_STORAGE, help=f"shared folder on the cluster (default: {DEFAULT_STORAGE})"
    )
    c.add_argument("--working-dir", default=".", help="project folder uploaded as the job's working directory")
    c.add_argument("--tracking-uri", default=None, help="MLflow store as seen from the head (default: the head's)")
    c.add_argument("--no-wait", action="store_true", help="return once submitted instead of streaming the log")
    for command, text in (("status", "show a submitted study's attempts"), ("stop", "stop a submitted study")):
        c = sub.add_parser(command, help=text)
        c.add_argument("name", help="study name")
        c.add_argument("--address", default=address, help=help_address)
        if command == "status":
            c.add_argument("--follow", action="store_true", help="stream the latest attempt's log until it ends")
        else:
            c.add_argument(
                "--wait", type=_seconds, default=60.0, metavar="SECONDS", help="how long to wait for it to end (60)"
            )
    for command in ("submit", "status", "stop"):
        sub.choices[command].set_defaults(func=_cmd_cluster)


def _cmd_analysis(args: argparse.Namespace) -> int:
    from impress.records import load_study, log_files
    from impress.report import ReportError, mode_of, pareto_files, report_files

    out = Path(args.out or Path("runs") / "reports" / folder_name(args.study, field="study name"))
    try:
        records = load_study(args.study, uri=args.store)
        if args.command == "report":
            files = report_files(records, out, run=args.run, log=not args.no_log)
            print(f"{records.name}: {len(records.trials)} trials, {int(records.trials['complete'].sum())} complete")
            print((out / "report.md").read_text() if args.show else "")
        else:
            files, configs = pareto_files(records, out, x=args.x, y=args.y)
            if not args.no_log:
                log_files(records, files)
            print(f"Pareto front of {args.y} ({mode_of(args.y)}) versus {args.x} ({mode_of(args.x)}):")
            print(files[3].read_text())
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(f) for f in files))
    if not args.no_log:
        print(f"and attached them to the study's MLflow run (artifacts analysis/) in {records.uri}")
    return 0


def _analysis_parsers(sub) -> None:
    """`impress pareto | report STUDY`: figures and tables from a study's MLflow records (impress/report.py)."""
    for command, text in (
        ("pareto", "the Pareto front of a study (mean and spread over seeds), as PNG, HTML, CSV and Markdown"),
        ("report", "a study's fronts, accuracy versus m, accuracy matrix, and the paper's comparison tables"),
    ):
        a = sub.add_parser(command, help=text, description=text)
        a.add_argument("study", help="study name (its MLflow experiment)")
        a.add_argument(
            "--store", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
        )
        a.add_argument("--out", default=None, help="folder for the files (default: runs/reports/STUDY)")
        a.add_argument("--no-log", action="store_true", help="do not attach the files to the study's MLflow run")
        if command == "pareto":
            a.add_argument("--x", default="bits/per_task", help="objective on the x axis (default: bits/per_task)")
            a.add_argument(
                "--y",
                default="acc/avg",
                help=(
                    "objective on the y axis, with or without its split (acc/avg, val/acc/avg and test/acc/avg "
                    "are one objective): the front is chosen on its validation value and drawn with its test "
                    "value (default: acc/avg)"
                ),
            )
        else:
            a.add_argument(
                "--run",
                default=None,
                help="one run's test accuracy matrix (default: mean over the seeds of the config best on val/acc/avg)",
            )
            a.add_argument("--show", action="store_true", help="print report.md")
        a.set_defaults(func=_cmd_analysis)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="impress", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "run",
        usage="impress run [config.yaml] [--key value ...] [--out DIR] [--name NAME] [--resume]",
        help="learn one task stream and report its metrics",
        description="Learn one task stream, task by task, and report accuracy, forgetting and bits\n"
        "per task. A config file (YAML, field: value) and the config flags set the config.",
        epilog=flags_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs", help="parent folder of the run's folder (default: runs)")
    p.add_argument("--name", help="run folder name (default: key=value~... of non-default fields, then seed)")
    p.add_argument("--resume", action="store_true", help="continue the run in the folder from its checkpoint")
    p.set_defaults(func=_cmd_run)
    s = sub.add_parser("study", help="run or resume a study with Ray Tune (Optuna searches, grids)")
    s.add_argument(
        "action",
        choices=["run", "resume", "sync", "confirm"],
        help=(
            "run a study file; resume a study by name; sync a study's trials to MLflow; confirm a study's "
            "front: rerun its configs with fresh seeds as the grid study NAME_confirm"
        ),
    )
    s.add_argument("target", help="study file (run) or study name (resume, sync, confirm)")
    s.add_argument("--storage", default="runs/studies", help="parent folder of study folders (default: runs/studies)")
    s.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    s.add_argument("--trials", type=int, default=None, help="override the study's trial count (searches)")
    s.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="confirm: the seeds to rerun the front with (default: three seeds the study did not use)",
    )
    s.add_argument(
        "--resume",
        action="store_true",
        help="run: if the study already has results, continue it instead (the file must be unchanged)",
    )
    s.set_defaults(func=_cmd_study)
    u = sub.add_parser("ui", help="start the MLflow UI over the studies' tracking store (127.0.0.1)")
    u.add_argument(
        "--store", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)"
    )
    u.add_argument("--study", default=None, help="print the URL of this study's experiment")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(func=_cmd_ui)
    _cluster_parsers(sub)
    _analysis_parsers(sub)
    from impress.data_cli import data_parsers  # `impress data mnist`

    data_parsers(sub)
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        # `impress run [config.yaml] [--key value ...]`: a leading bare word is the YAML file
        args.config = rest.pop(0) if rest and not rest[0].startswith("--") else None
        args.overrides = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (
        ConfigError,
        StudyError,
        FolderNameError,
        TrackingError,
        ClusterError,
        FileNotFoundError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
