"""The `impress run` command, run as a real subprocess on digits (a few tasks, a few epochs); its help;
and the names and flags every command checks before it writes anything."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from impress.cli import main
from impress.config import Config, choices

STUDIES = Path(__file__).resolve().parents[1] / "studies"

RESULT_KEYS = {"config", "acc_matrix", "val_acc_matrix", "metrics", "overhead", "task_seconds", "stream", "provenance"}
FIRST_RUN = {"num_tasks": "3", "m": "2", "epochs": "2"}


def _impress(*args: str, cwd) -> subprocess.CompletedProcess:
    # NOTE: one intra-op thread. On a small, shared machine torch's default thread pool spins
    # against other processes: the 3-task run below trained in 13 s with the default and in
    # 1 s with one thread. Threads do not change the results or the run's name.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "impress.cli", "run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _flags(options: dict[str, str]) -> list[str]:
    return [token for key, value in options.items() for token in (f"--{key}", value)]


def _check_acc_matrix(R: list[list[float | None]], num_tasks: int) -> None:
    assert len(R) == num_tasks and all(len(row) == num_tasks for row in R)
    for i, row in enumerate(R):
        for j, value in enumerate(row):
            if j > i:
                assert value is None, f"R[{i}][{j}] is a task not yet seen"
            else:
                assert isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """`impress run --out <tmp> --num_tasks 3 --m 2 --epochs 2`: (process, run folder, results, out)."""
    out = tmp_path_factory.mktemp("runs")
    proc = _impress("--out", str(out), *_flags(FIRST_RUN), cwd=out)
    run_dir = out / Config.from_dict(FIRST_RUN).run_name()
    results = json.loads((run_dir / "results.json").read_text()) if proc.returncode == 0 else None
    return proc, run_dir, results, out


def test_run_prints_a_table_and_writes_its_results(first_run):
    proc, run_dir, results, out = first_run
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.iterdir()] == [run_dir.name]

    assert RESULT_KEYS <= set(results)
    assert results["config"] == Config.from_dict(FIRST_RUN).to_dict()
    R, V = results["acc_matrix"], results["val_acc_matrix"]  # test, validation
    _check_acc_matrix(R, 3)
    _check_acc_matrix(V, 3)
    metrics = results["metrics"]
    assert metrics["test/acc/avg"] == pytest.approx(sum(R[-1]) / 3)
    assert metrics["val/acc/avg"] == pytest.approx(sum(V[-1]) / 3)
    # the table: each metric's test value (the headline), its validation value beside it
    for name in ("acc/avg", "forgetting", "bwt"):
        line = next(line for line in proc.stdout.splitlines() if line.startswith(f"{name} "))
        assert line.split() == [name, f"{metrics[f'test/{name}']:.3f}", f"{metrics[f'val/{name}']:.3f}"]
    # the progress bar: the test accuracy so far and the just-trained task's
    assert f"test/acc/avg={metrics['test/acc/avg']:.3f}, just_trained={R[2][2]:.3f}]" in proc.stderr, proc.stderr
    assert len(results["task_seconds"]) == 3 and all(s > 0 for s in results["task_seconds"])
    assert results["stream"]["stream"] == "rotated" and results["stream"]["tasks"] == 3
    for name in results["stream"]["task_names"]:
        assert name in proc.stdout
    assert results["provenance"]["seed"] == 0

    for name, matrix in (("acc_matrix.csv", R), ("val_acc_matrix.csv", V)):
        with open(run_dir / name, newline="") as f:
            header, *rows = list(csv.reader(f))
        assert len(header) == 3 and len(rows) == 3
        for row, expected in zip(rows, matrix):
            for text, value in zip(row, expected):
                if value is None:
                    assert math.isnan(float(text))
                else:
                    assert float(text) == pytest.approx(value, abs=1e-6)

    assert yaml.safe_load((run_dir / "config.yaml").read_text()) == results["config"]


def test_rerun_without_resume_exits_2(first_run):
    proc, run_dir, results, out = first_run
    assert proc.returncode == 0, proc.stderr
    again = _impress("--out", str(out), *_flags(FIRST_RUN), cwd=out)
    assert again.returncode == 2
    assert "--resume" in again.stderr
    assert json.loads((run_dir / "results.json").read_text()) == results  # untouched


def test_resume_reproduces_the_results(first_run):
    proc, run_dir, results, out = first_run
    assert proc.returncode == 0, proc.stderr
    resumed = _impress("--out", str(out), *_flags(FIRST_RUN), "--resume", cwd=out)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((run_dir / "results.json").read_text())
    assert after["acc_matrix"] == results["acc_matrix"] and after["val_acc_matrix"] == results["val_acc_matrix"]
    assert after["config"] == results["config"]


def test_resume_with_another_config_exits_2_and_keeps_the_config_file(first_run):
    proc, run_dir, results, out = first_run
    assert proc.returncode == 0, proc.stderr
    before = (run_dir / "config.yaml").read_text()
    other = _impress("--out", str(out), "--name", run_dir.name, *_flags(FIRST_RUN), "--lr", "0.02", "--resume", cwd=out)
    assert other.returncode == 2
    assert "differs in ['lr']" in other.stderr
    assert (run_dir / "config.yaml").read_text() == before


def test_resume_of_a_supsup_run_reproduces_the_results(tmp_path):
    # SupSup keeps all per-task state in the masked layers' banks, which do grow on loading.
    flags = ["--out", str(tmp_path), "--name", "supsup", "--method", "supsup", "--num_tasks", "2"]
    flags += ["--epochs", "1", "--widths", "32,32"]
    first = _impress(*flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    results = json.loads((tmp_path / "supsup" / "results.json").read_text())
    assert _impress(*flags, cwd=tmp_path).returncode == 2
    resumed = _impress(*flags, "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((tmp_path / "supsup" / "results.json").read_text())
    assert after["acc_matrix"] == results["acc_matrix"]
    assert after["task_seconds"] == results["task_seconds"]  # no task was trained again


def test_yaml_config_with_a_flag_override(tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text("num_tasks: 2\nm: 1\nepochs: 3\nwidths: [32, 32]\nlr: 0.02\n")
    proc = _impress(str(config), "--out", str(tmp_path / "runs"), "--name", "small", "--epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "runs" / "small" / "results.json").read_text())
    cfg = results["config"]
    assert cfg["epochs"] == 1  # the flag wins over the file
    assert (cfg["num_tasks"], cfg["m"], cfg["widths"], cfg["lr"]) == (2, 1, [32, 32], 0.02)  # the rest is the file's
    _check_acc_matrix(results["acc_matrix"], 2)


def test_unknown_flag_exits_2_naming_it(tmp_path):
    proc = _impress("--out", str(tmp_path / "runs"), "--num_taks", "3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "num_taks" in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("flag", "value"), [("sparsity", "1.0"), ("m", "0"), ("epochs", "-1")])
def test_out_of_range_value_exits_2_naming_the_field(tmp_path, flag, value):
    proc = _impress("--out", str(tmp_path / "runs"), f"--{flag}", value, cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: {flag}: " in proc.stderr
    assert "outside the allowed range" in proc.stderr
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# `impress run --help`: every config flag with its type, choices or range, and default


@pytest.fixture(scope="module")
def run_help() -> dict[str, str]:
    """`impress run --help` as a user sees it (80 columns), one entry per config flag, lines joined."""
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-m", "impress.cli", "run", "--help"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    flags = done.stdout.split("\nconfig flags (")[1]
    assert max(len(line) for line in flags.splitlines()) <= 80
    return {m[1]: " ".join(m[0].split()) for m in re.finditer(r"^  --(\w+) .*?(?=^  --|\Z)", flags, re.M | re.S)}


def _written(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("f", dataclasses.fields(Config), ids=lambda f: f.name)
def test_run_help_shows_each_flags_type_choices_or_range_and_default(run_help, f):
    assert f.name in run_help, f"--{f.name} is not in `impress run --help`"
    entry = run_help[f.name]
    syntax = entry.split(f.metadata["doc"])[0]  # what follows --name, before the help text
    hint = typing.get_type_hints(Config)[f.name]
    if (allowed := choices(f)) is not None:  # the method's choices: the registry's keys
        assert "{" + ",".join(map(str, allowed)) + "}" in syntax
    else:  # the type: `INT`, `FLOAT`, `STR`, `{true,false}`, or a list `INT,INT,...`
        base = next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
        item = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
        word = {int: "INT", float: "FLOAT", str: "STR", bool: "{true,false}"}[item]
        assert syntax.startswith(f"--{f.name} {word},{word},..." if item is not base else f"--{f.name} {word}")
    if "range" in f.metadata:
        lo, hi, lo_open, hi_open = f.metadata["range"]
        assert f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}" in syntax
    assert ("or null" in syntax) == (type(None) in typing.get_args(hint))
    assert entry.endswith(f"{f.metadata['doc']} (default: {_written(f.default)})")


def test_run_help_reads_as_documented(run_help):
    assert run_help["sparsity"].startswith("--sparsity FLOAT in [0.0, 1.0) fraction of weights a mask REMOVES")
    assert run_help["sparsity"].endswith("(default: 0.5)")
    assert run_help["widths"] == "--widths INT,INT,... hidden widths of the mlp backbone (default: 256,256)"
    assert run_help["alpha_epochs"].startswith("--alpha_epochs INT or null ")
    assert run_help["method"].startswith("--method {supsup,impresslearn,batche,finetune} ")


# ---------------------------------------------------------------------------------------------
# Names that would write outside their folder, and flags that skip the study file's checks


@pytest.mark.parametrize("name", ["..", ".", "../elsewhere", "a/b", "ABSOLUTE"])
def test_a_run_name_outside_the_out_folder_is_refused_before_anything_is_written(tmp_path, capsys, name):
    name = str(tmp_path / "elsewhere") if name == "ABSOLUTE" else name
    small = ["--num_tasks", "1", "--m", "1", "--epochs", "1", "--widths", "8"]
    assert main(["run", "--out", str(tmp_path / "runs"), "--name", name, *small]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --name: {name!r} would put files outside its folder; a name is one folder name " + (
        "(not empty, '.' or '..', and without '/')\n"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [["study", "resume"], ["study", "sync"], ["status"], ["stop"], ["pareto"], ["report"], ["ui", "--study"]],
    ids=" ".join,
)
def test_commands_taking_a_study_name_refuse_one_outside_its_folder(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    store = ["--store", f"sqlite:///{tmp_path / 'mlflow.db'}"] if command[0] == "ui" else []
    assert main([*command, "..", *store]) == 2
    err = capsys.readouterr().err
    field = "--study" if command[0] == "ui" else "study name"
    assert err.startswith(f"error: {field}: '..' would put files outside its folder; a name is one folder name")
    assert err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def _study_run(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "impress.cli", "study", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("trials", ["0", "-2"])
def test_a_trial_budget_flag_is_checked_as_the_files_is_before_ray_starts(tmp_path, trials):
    done = _study_run(str(STUDIES / "quickstart.yaml"), "--trials", trials, "--storage", "studies", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == f"error: --trials: expected an integer >= 1, got {trials}\n"
    assert list(tmp_path.iterdir()) == []  # no study folder: Ray never started


def test_a_trial_budget_flag_on_a_grid_study_is_refused(tmp_path):
    done = _study_run(str(STUDIES / "granularity.yaml"), "--trials", "4", "--storage", "studies", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: --trials: study 'granularity' is a grid study: it runs each of its ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("wait", ["0", "-1", "nan", "inf", "soon"])
def test_stop_refuses_a_wait_that_is_not_a_positive_number_of_seconds(capsys, wait):
    with pytest.raises(SystemExit) as exit_:  # a usage error, before any cluster is asked
        main(["stop", "some_study", "--wait", wait])
    assert exit_.value.code == 2
    assert f"argument --wait: expected a positive number of seconds, got {wait!r}" in capsys.readouterr().err
