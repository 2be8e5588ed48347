"""Study files: what a study searches or sweeps, validated before anything runs.

A study is a YAML file with a `name`, the fixed `base` config, and either an Optuna `search`
space or an exhaustive `grid` (axes, and/or a list of `cases`), plus objectives, sampler, trial
count, concurrency, seeds, per-trial resources and optional ASHA early stopping. Every value a
trial could receive is checked against `Config` here, so a malformed study fails before Ray starts.
This module never imports Ray or Optuna.

A study chooses on validation and reports on test: its objectives and early stopping name
validation metrics (`val/acc/avg`, `val/forgetting`, ...) or metrics of no data split
(`bits/per_task`), which is what ASHA and Optuna see; its results show each one's test twin
(`test/acc/avg`) beside it. A test metric, or a name without its split (`acc/avg`, as metrics were
once named), is refused with the name of its validation twin; `choose_on_test: true` admits test
metrics, knowingly (a front chosen on test overstates how well its configs generalise).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impress.config import INFERENCE_RULES, Config, ConfigError, method_class
from impress.folders import FolderNameError, folder_name
from impress.metrics import split_of as metric_split
from impress.metrics import twin
from impress.yaml_files import read_yaml

__all__ = [
    "Study",
    "Param",
    "Objective",
    "EarlyStopping",
    "Resources",
    "StudyError",
    "METRICS",
    "FINAL_METRICS",
    "SAMPLERS",
]

# NOTE: a study chooses on validation. Its objectives and early stopping name `val/...` metrics (or
# metrics of no data split); `choose_on_test: true` admits their `test/...` twins, knowingly.
_MEASURED = ("acc/avg", "acc/avg_coeff_tasks", "acc/just_trained", "forgetting", "bwt")
_INFERRED = ("task_infer/acc", "acc/gns", "acc/gnu")
# Metrics a trial reports at every task boundary that a study may optimise or stop on.
METRICS = (*(f"val/{m}" for m in _MEASURED), "bits/per_task", "bits/total", "time/task_s")
# Metrics a trial reports once, after its last task (task-identity inference, GN scenarios): a
# study may optimise them (alone or per rule, `val/task_infer/acc/binary_g`) but not stop early on them.
FINAL_METRICS = (*(f"val/{m}" for m in _INFERRED), "time/infer_batch_ms")
SAMPLERS = ("tpe", "nsga2", "random", "grid")


class StudyError(ValueError):
    """A study file is malformed; the message names the field and what was expected."""


@dataclass(frozen=True)
class Param:
    """One dimension of an Optuna search space."""

    name: str
    kind: str  # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def extremes(self) -> list[Any]:
        """Values that must all make a valid config: both bounds, or every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # max | min


@dataclass(frozen=True)
class EarlyStopping:
    """ASHA at task boundaries: trials behind at a rung stop early (and never enter the front)."""

    metric: str = "val/acc/avg"
    mode: str = "max"
    grace_tasks: int = 2
    reduction_factor: int = 2


@dataclass(frozen=True)
class Resources:
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Study:
    name: str
    question: str = ""
    base: dict[str, Any] = field(default_factory=dict)
    search: tuple[Param, ...] = ()
    grid: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    cases: tuple[dict[str, Any], ...] = ()
    objectives: tuple[Objective, ...] = (Objective("val/acc/avg", "max"),)
    sampler: str = "tpe"
    sampler_seed: int = 0
    trials: int = 10  # search studies: how many configs Optuna proposes
    concurrency: int = 2
    seeds: tuple[int, ...] = (0,)
    resources: Resources = Resources()
    early_stopping: EarlyStopping | None = None
    max_failures: int = 2  # retries of a failed trial, each from its last finished task
    tracking_uri: str | None = None  # MLflow; None: a SQLite file beside the study's results
    choose_on_test: bool = False  # objectives and early stopping may name test metrics (biased: opt-in)

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return "search" if self.search else "grid"

    def config(self, **trial: Any) -> Config:
        """The config of one trial: base, then the trial's values."""
        return Config.from_dict({**self.base, **trial})

    def example_config(self) -> Config:
        """A valid trial config: every searched field at its low or first value, or the first grid point."""
        values = {p.name: p.extremes()[0] for p in self.search} if self.search else self.grid_points()[0]
        return self.config(**{**values, "seed": self.seeds[0]})

    def grid_points(self) -> list[dict[str, Any]]:
        """Every trial of a grid study: cases x axes x seeds (in that order)."""
        axes = list(self.grid.items())
        points = []
        for case in self.cases or ({},):
            for values in itertools.product(*(v for _, v in axes)):
                for seed in self.seeds:
                    points.append({**case, **dict(zip((k for k, _ in axes), values)), "seed": seed})
        return points

    def with_trials(self, trials: Any, *, where: str = "trials") -> Study:
        """The study with another trial budget (`impress study run --trials`), checked as the file's
        `trials` is. Only a search has a budget: a grid study runs each of its points once."""
        if self.kind != "search":
            raise StudyError(
                f"{where}: study {self.name!r} is a grid study: it runs each of its {len(self.grid_points())} "
                f"grid points once; only a search takes a number of trials"
            )
        return dataclasses.replace(self, trials=_int(trials, where, 1))

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> Study:
        data = read_yaml(path, error=StudyError, what="study file")
        try:
            return cls.from_dict(data)
        except StudyError as err:
            raise StudyError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, data: Any) -> Study:
        if not isinstance(data, dict):
            raise StudyError("a study must be a mapping with at least `name`")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StudyError(f"unknown study key(s) {unknown}; known keys: {sorted(known)}")
        if "name" not in data:
            raise StudyError("name: required (letters, digits, '_', '-', '.')")
        name = data["name"]
        try:  # the name is the study's folder (and its MLflow artifacts' folder): `..` would escape it
            if isinstance(name, str):
                folder_name(name, field="name")
        except FolderNameError as err:
            raise StudyError(str(err)) from None
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise StudyError(f"name: {name!r} must be letters, digits, '_', '-' or '.'")
        kw: dict[str, Any] = {"name": name, "question": str(data.get("question", ""))}
        kw["base"] = _mapping(data.get("base", {}), "base")
        kw["search"] = tuple(_param(k, v) for k, v in _mapping(data.get("search", {}), "search").items())
        kw["grid"] = {k: _values(v, f"grid.{k}") for k, v in _mapping(data.get("grid", {}), "grid").items()}
        cases = data.get("cases", [])
        if not isinstance(cases, list) or not all(isinstance(c, dict) for c in cases):
            raise StudyError("cases: expected a list of mappings of config fields")
        kw["cases"] = tuple(cases)
        on_test = data.get("choose_on_test", False)
        if not isinstance(on_test, bool):
            raise StudyError(f"choose_on_test: expected true or false, got {on_test!r}")
        kw["choose_on_test"] = on_test
        objectives = _list(data.get("objectives", [{"metric": "val/acc/avg", "mode": "max"}]), "objectives")
        kw["objectives"] = tuple(_objective(i, o, on_test) for i, o in enumerate(objectives))
        kw["sampler"] = _choice(data.get("sampler", "tpe"), SAMPLERS, "sampler")
        kw["sampler_seed"] = _int(data.get("sampler_seed", 0), "sampler_seed", 0)
        kw["trials"] = _int(data.get("trials", 10), "trials", 1)
        kw["concurrency"] = _int(data.get("concurrency", 2), "concurrency", 1)
        kw["max_failures"] = _int(data.get("max_failures", 2), "max_failures", 0)
        seeds = data.get("seeds", [0])
        kw["seeds"] = tuple(_int(s, "seeds", 0) for s in _list(seeds, "seeds"))
        kw["resources"] = _resources(data.get("resources", {}))
        if (es := data.get("early_stopping")) is not None:
            kw["early_stopping"] = _early_stopping(es, on_test)
        if (uri := data.get("tracking_uri")) is not None and not isinstance(uri, str):
            raise StudyError(f"tracking_uri: expected a string, got {uri!r}")
        if uri is not None and urllib.parse.urlsplit(uri).password is not None:
            raise StudyError(
                "tracking_uri: holds a password, and the study file is logged with the study; give the "
                "credentials as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
            )
        kw["tracking_uri"] = uri
        study = cls(**kw)
        study._check()
        return study

    def _check(self) -> None:
        fields = {f.name for f in dataclasses.fields(Config)}
        for where, keys in (
            ("base", self.base),
            ("search", [p.name for p in self.search]),
            ("grid", self.grid),
            *((f"cases[{i}]", c) for i, c in enumerate(self.cases)),
        ):
            bad = sorted(set(keys) - fields)
            if bad:
                raise StudyError(f"{where}: unknown config key(s) {bad}; known keys: {sorted(fields)}")
            if "seed" in keys:
                raise StudyError(f"{where}: set seeds with the study's `seeds` list, not a `seed` field")
        if self.search and (self.grid or self.cases):
            raise StudyError("search and grid/cases: a study either searches (Optuna) or sweeps a grid, not both")
        if self.search and len(self.seeds) != 1:
            raise StudyError(
                "seeds: a search study runs each proposed config with one seed; list one, or sweep "
                "seeds in a grid study"
            )
        if self.sampler == "grid" and self.search:
            raise StudyError("sampler: `grid` is for grid studies; a search uses tpe, nsga2 or random")
        overlap = sorted({p.name for p in self.search} & set(self.base))
        if overlap:
            raise StudyError(f"search: {overlap} also fixed in base; a field is either searched or fixed")
        reference = {p.name: p.extremes()[0] for p in self.search}  # every searched field at its low/first value
        if not self.search and not self.grid and not self.cases:
            self._valid_or_raise("base", seed=self.seeds[0])
        if self.search:
            self._valid_or_raise("base with every searched field at its low or first value", **reference, seed=0)
            for p in self.search:
                for value in p.extremes():
                    self._valid_or_raise(
                        f"search.{p.name}: {value!r} would make an invalid config",
                        **{**reference, p.name: value},
                        seed=0,
                    )
        for point in self.grid_points() if not self.search else []:
            where = ", ".join(f"{k}={v}" for k, v in point.items() if k != "seed")
            self._valid_or_raise(f"grid point ({where})", **point)
        example = self.example_config()
        if self.early_stopping and self.early_stopping.grace_tasks >= example.num_tasks:
            raise StudyError(
                f"early_stopping.grace_tasks: {self.early_stopping.grace_tasks} must be below the "
                f"stream's num_tasks ({example.num_tasks})"
            )

    def _valid_or_raise(self, where: str, **values: Any) -> None:
        try:
            cfg = self.config(**values)
        except ConfigError as err:
            raise StudyError(f"{where}: {err}") from None
        for i, o in enumerate(self.objectives):
            if (why := _not_produced(o.metric, cfg)) is not None:
                raise StudyError(f"objectives[{i}].metric: {o.metric} is never reported at {where}: {why}")


# ---- field parsers (each error names its field) ------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise StudyError(f"{where}: expected a non-empty list, got {value!r}")
    return value


def _values(value: Any, where: str) -> tuple[Any, ...]:
    return tuple(_list(value, where))


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise StudyError(f"{where}: expected a number, got {value!r}")
    return value


def _choice(value: Any, options: tuple[str, ...], where: str) -> str:
    if value not in options:
        raise StudyError(f"{where}: {value!r} is not one of {list(options)}")
    return value


def _param(name: str, spec: Any) -> Param:
    where = f"search.{name}"
    if isinstance(spec, list):  # shorthand: a list of choices
        spec = {"choices": spec}
    spec = _mapping(spec, where)
    allowed = {"type", "low", "high", "log", "step", "choices"}
    if bad := sorted(set(spec) - allowed):
        raise StudyError(f"{where}: unknown key(s) {bad}; expected {sorted(allowed)}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    kind = _choice(kind, ("int", "float", "categorical"), f"{where}.type")
    if kind == "categorical":
        choices = _values(spec.get("choices"), f"{where}.choices")
        if odd := [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]:
            raise StudyError(
                f"{where}.choices: Optuna samples numbers, strings, booleans or null, got {odd[0]!r}; "
                f"write a list as a string (e.g. '32,32')"
            )
        if extra := sorted(set(spec) - {"type", "choices"}):
            raise StudyError(f"{where}: {extra} do not apply to a categorical parameter")
        return Param(name, kind, choices=choices)
    if "low" not in spec or "high" not in spec:
        raise StudyError(f"{where}: {'an int' if kind == 'int' else 'a float'} parameter needs `low` and `high`")
    low, high = _number(spec["low"], f"{where}.low"), _number(spec["high"], f"{where}.high")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise StudyError(f"{where}: an int parameter needs integer bounds, got low={low}, high={high}")
    if low > high:
        raise StudyError(f"{where}: low ({low}) must not exceed high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise StudyError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise StudyError(f"{where}: a log-scaled parameter needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}.step")
        if step <= 0 or log:
            raise StudyError(f"{where}.step: must be positive and cannot be combined with log")
        if kind == "int" and not float(step).is_integer():
            raise StudyError(f"{where}.step: an int parameter needs a whole step, got {step}")
        # NOTE: Optuna would silently lower `high` to the last multiple of the step (never sampling it)
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9:
            last = round(low + step * math.floor(steps + 1e-9), 12)
            raise StudyError(
                f"{where}.step: {step} does not divide high - low ({high} - {low}), so {high} could never "
                f"be sampled; use high: {last} or another step"
            )
    if kind == "int":
        low, high = int(low), int(high)
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _metric(metric: Any, allowed: tuple[str, ...], on_test: bool, where: str) -> str:
    """`metric` if it is `allowed`; the test twin of an allowed metric only with `choose_on_test`.
    A test metric, or an allowed metric's name without its split, is refused naming its validation
    twin (a StudyError whose message says "chooses on validation")."""
    if not isinstance(metric, str):
        raise StudyError(f"{where}: expected a metric name, got {metric!r}")
    if metric in allowed:
        return metric
    if metric_split(metric) == "test" and (val := twin(metric, "val")) in allowed:
        if on_test:
            return metric
        raise StudyError(
            f"{where}: {metric!r} is measured on the test split, and a study chooses on validation: use "
            f"{val!r} (the study's results show its test value beside it; `choose_on_test: true` at the "
            f"study's top level chooses on test, knowingly)"
        )
    if metric_split(metric) is None and (val := f"val/{metric}") in allowed:
        test = twin(val, "test")
        raise StudyError(
            f"{where}: {metric!r} names no data split (metrics are `val/...` or `test/...`), and a study "
            f"chooses on validation: use {val!r} (the study's results show {test!r} beside it"
            + (f"; with `choose_on_test: true`, {test!r} chooses on test)" if on_test else ")")
        )
    raise StudyError(f"{where}: {metric!r} is not one of {list(allowed)}")


def _objective(i: int, spec: Any, on_test: bool = False) -> Objective:
    where = f"objectives[{i}]"
    spec = _mapping(spec, where)
    if bad := sorted(set(spec) - {"metric", "mode"}):
        raise StudyError(f"{where}: unknown key(s) {bad}; expected metric and mode")
    per_rule = tuple(f"{m}/{r}" for m in FINAL_METRICS for r in INFERENCE_RULES)
    try:
        metric = _metric(spec.get("metric"), METRICS + FINAL_METRICS + per_rule, on_test, f"{where}.metric")
    except StudyError as err:
        if "chooses on validation" in str(err):
            raise
        raise StudyError(
            f"{where}.metric: {spec.get('metric')!r} is not one of {list(METRICS + FINAL_METRICS)}, "
            f"nor an inference metric per rule (e.g. val/task_infer/acc/{INFERENCE_RULES[0]})"
        ) from None
    return Objective(metric, _choice(spec.get("mode"), ("max", "min"), f"{where}.mode"))


def _not_produced(metric: str, cfg: Config) -> str | None:
    """Why a trial with `cfg` never reports `metric` (None: it does)."""
    metric = metric.split("/", 1)[1] if metric_split(metric) else metric
    if metric == "acc/avg_coeff_tasks":
        method = method_class(cfg.method)
        if method.dedicated_tasks(cfg, cfg.num_tasks) >= cfg.num_tasks:
            return (
                f"{method.label} keeps full state of its own for every one of the {cfg.num_tasks} tasks "
                f"(with this config), so none is learned by coefficients alone"
            )
    if not metric.startswith((*_INFERRED, "time/infer_batch_ms")):
        return None
    if cfg.scenario == "GG":
        return "task identity is given (scenario GG); infer it with scenario GNs or GNu"
    if metric.startswith(("acc/gns", "acc/gnu")) and metric[4:7] != cfg.scenario.lower():
        return f"the trial's scenario is {cfg.scenario}"
    rule = metric.rsplit("/", 1)[1] if metric.count("/") == 2 else None
    if rule is not None and rule not in cfg.infer_rules:
        return f"{rule!r} is not among its infer_rules {list(cfg.infer_rules)}"
    return None


def _resources(spec: Any) -> Resources:
    spec = _mapping(spec, "resources")
    if bad := sorted(set(spec) - {"cpu", "gpu"}):
        raise StudyError(f"resources: unknown key(s) {bad}; expected cpu and gpu")
    cpu = _number(spec.get("cpu", 1), "resources.cpu")
    gpu = _number(spec.get("gpu", 0), "resources.gpu")
    if cpu <= 0 or gpu < 0:
        raise StudyError(f"resources: cpu must be > 0 and gpu >= 0 (fractions allowed), got cpu={cpu}, gpu={gpu}")
    return Resources(cpu, gpu)


def _early_stopping(spec: Any, on_test: bool = False) -> EarlyStopping:
    spec = _mapping(spec, "early_stopping")
    if bad := sorted(set(spec) - {f.name for f in dataclasses.fields(EarlyStopping)}):
        raise StudyError(f"early_stopping: unknown key(s) {bad}")
    return EarlyStopping(
        metric=_metric(spec.get("metric", "val/acc/avg"), METRICS, on_test, "early_stopping.metric"),
        mode=_choice(spec.get("mode", "max"), ("max", "min"), "early_stopping.mode"),
        grace_tasks=_int(spec.get("grace_tasks", 2), "early_stopping.grace_tasks", 1),
        reduction_factor=_int(spec.get("reduction_factor", 2), "early_stopping.reduction_factor", 2),
    )
