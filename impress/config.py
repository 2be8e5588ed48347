"""The run configuration: one frozen dataclass, validated where it enters (YAML, flags, dicts).

`sparsity` is the user-facing knob and means the fraction of weights REMOVED; everything inside
works with `density = 1 - sparsity`, the fraction kept.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impress.yaml_files import read_yaml

__all__ = ["Config", "ConfigError", "INFERENCE_RULES", "INFERENCE_FIELDS", "choices", "method_class"]


class ConfigError(ValueError):
    """A configuration value or key is not acceptable; the message names the field."""


# NOTE: a field's metadata holds its one line of help (`doc`, shown by `impress run --help`) and
# its check (`choices`, or a `range` lo, hi, lo_open, hi_open); `__post_init__` enforces the check


def _doc(doc: str) -> dict[str, Any]:
    return {"doc": doc}


def _choice(*options: str, doc: str) -> dict[str, Any]:
    return {"choices": options, "doc": doc}


def _registered(doc: str) -> dict[str, Any]:
    """Choices are the keys of the method registry, `impress.methods.METHODS`, imported when first
    needed (validating a config): the methods bring in torch, which importing this module does not."""
    return {"registry": True, "doc": doc}


def choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    """A field's allowed values (None: not a choice field)."""
    if f.metadata.get("registry"):
        from impress.methods import METHODS

        return tuple(METHODS)
    return f.metadata.get("choices")


def method_class(name: str) -> type:
    """The registered `Method` class of a method name (imports torch)."""
    from impress.methods import METHODS

    return METHODS[name]


def _range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, doc: str) -> dict[str, Any]:
    return {"range": (lo, hi, lo_open, hi_open), "doc": doc}


SOURCE_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}

# task-identity inference rules (implemented in `impress.inference.RULES`): search x objective
INFERENCE_RULES = ("oneshot_h", "oneshot_g", "binary_h", "binary_g", "oneshot_h_real", "binary_h_real", "fit")
# fields that change only how a finished model is evaluated, not what it learns (a checkpoint
# written under other values of these still fits)
INFERENCE_FIELDS = (
    "scenario",
    "infer_rules",
    "infer_batch_size",
    "infer_single",
    "infer_binary_steps",
    "infer_fit_steps",
    "infer_fit_lr",
    "infer_fit_start",
    "infer_gain",
)


@dataclass(frozen=True, kw_only=True)
class Config:
    # data
    stream: str = field(
        default="rotated",
        metadata=_choice(
            "permuted",
            "rotated",
            "split",
            doc="tasks: a pixel permutation each, rotations in 360/T degree steps, or disjoint class subsets",
        ),
    )
    source: str = field(
        default="digits",
        metadata=_choice(
            *SOURCE_CLASSES, doc="images: digits (bundled with scikit-learn), or a torchvision dataset in data_root"
        ),
    )
    data_root: str | None = field(
        default=None,
        metadata=_doc("folder of torchvision datasets (null: $IMPRESS_DATA, else ~/.cache/impress/data)"),
    )
    download: bool = field(default=False, metadata=_doc("download a torchvision dataset missing from data_root"))
    num_tasks: int = field(default=20, metadata=_range(1, 100_000, doc="tasks in the stream"))
    classes_per_task: int = field(default=2, metadata=_range(2, 1000, doc="split streams: classes per task"))
    split_labels: str = field(
        default="remap", metadata=_choice("remap", "keep", doc="split streams: labels remapped to 0..k-1, or kept")
    )
    task_order: str = field(
        default="sequential",
        metadata=_choice(
            "sequential", "shuffled", doc="learn the tasks in the stream's order, or in a seeded random order"
        ),
    )
    # model
    backbone: str = field(
        default="mlp",
        metadata=_choice(
            "mlp", "lenet300", "fc1024", "convnet", "resnet18", doc="the frozen random network (mlp: hidden `widths`)"
        ),
    )
    widths: tuple[int, ...] = field(default=(256, 256), metadata=_doc("hidden widths of the mlp backbone"))
    bn: str = field(
        default="task",
        metadata=_choice("task", "batch", doc="conv nets: per-task BatchNorm statistics, or the batch's"),
    )
    # method
    method: str = field(
        default="impresslearn",
        metadata=_registered("a mask per task, masks mixed by per-task coefficients, rank-one fast weights, dense"),
    )
    sparsity: float = field(
        default=0.5,
        metadata=_range(
            0.0, 1.0, hi_open=True, doc="fraction of weights a mask REMOVES (density = 1 - sparsity is kept)"
        ),
    )
    mask: str = field(
        default="topk",
        metadata=_choice("topk", "threshold", doc="exact density (edge-popup), or SupSup's fast scores >= 0"),
    )
    impressions: str = field(
        default="heterogeneous",
        metadata=_choice(
            "heterogeneous",
            "homogeneous",
            "random",
            doc="the bank: the first m tasks' masks, m masks of task 0 (other seeds), or m random masks",
        ),
    )
    m: int = field(default=10, metadata=_range(1, 100_000, doc="impressions in the bank"))
    granularity: str = field(
        default="layer",
        metadata=_choice(
            "global",
            "layer",
            "group",
            "channel",
            doc="coefficients per task: m, m per layer, m per block of `groups` output units, or m per output unit",
        ),
    )
    groups: int = field(
        default=4,
        metadata=_range(
            1,
            1_000_000,
            doc="granularity group: coefficient rows per layer (blocks of output units; at most the units)",
        ),
    )
    alpha_bits: int = field(
        default=32,
        metadata={
            "choices": (32, 16, 8),
            "doc": "stored precision of coefficients: float32, float16, or int8 with a float16 scale per row",
        },
    )
    shared_weight: str = field(
        default="first_task",
        metadata=_choice(
            "first_task", "random", doc="batche: the shared weight, trained on the first task or the random backbone"
        ),
    )
    alpha_param: str = field(
        default="linear",
        metadata=_choice("linear", "softmax", doc="coefficients as learned (may be negative), or on the simplex"),
    )
    # optimisation
    optimizer: str = field(
        default="adam",
        metadata=_choice("adam", "sgd", "rmsprop", doc="updates scores, coefficients (finetune: weights)"),
    )
    lr: float = field(
        default=0.01, metadata=_range(0.0, 10.0, lo_open=True, doc="step size of mask scores (finetune: weights)")
    )
    alpha_lr: float = field(default=0.05, metadata=_range(0.0, 10.0, lo_open=True, doc="step size of coefficients"))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True, doc="sgd only"))
    epochs: int = field(default=10, metadata=_range(1, 100_000, doc="epochs per task"))
    alpha_epochs: int | None = field(
        default=None, metadata=_doc("epochs of a task learned by coefficients; null: `epochs`")
    )
    batch_size: int = field(default=128, metadata=_range(1, 1_000_000, doc="training batch size"))
    # task identity at test time (README, "Task-identity inference")
    scenario: str = field(
        default="GG",
        metadata=_choice(
            "GG",
            "GNs",
            "GNu",
            doc="task identity given, or inferred with shared / unshared labels (GNu: a wrong batch scores 0)",
        ),
    )
    infer_rules: tuple[str, ...] = field(
        default=("oneshot_h",),
        metadata=_doc(f"GN: rules, the first is the headline: {' '.join(INFERENCE_RULES)}"),
    )
    superfluous: int = field(
        default=0, metadata=_range(0, 100_000, doc="extra output neurons, never a label (SupSup's G objective: >= 1)")
    )
    infer_batch_size: int = field(default=128, metadata=_range(1, 1_000_000, doc="test images inferred together"))
    infer_single: bool = field(
        default=False, metadata=_doc("also infer from every test image alone (`_single` metrics)")
    )
    infer_binary_steps: int | None = field(
        default=None, metadata=_doc("binary rules: halvings before a one-shot pick; null: until one is left")
    )
    infer_fit_steps: int = field(default=10, metadata=_range(1, 10_000, doc="fit rule: entropy-minimisation steps"))
    infer_fit_lr: float = field(default=0.01, metadata=_range(0.0, 10.0, lo_open=True, doc="fit rule: Adam step size"))
    infer_fit_start: str = field(
        default="oneshot", metadata=_choice("oneshot", "mean", doc="fit rule: the initial combination")
    )
    infer_gain: str = field(
        default="unit",
        metadata=_choice(
            "unit", "raw", doc="ImpressLearn: compare tasks at the logit scale of binary masks, or as stored"
        ),
    )
    # run
    seed: int = field(
        default=0, metadata=_range(0, 2**31 - 1, doc="drives the stream, backbone, scores and data order")
    )
    device: str = field(default="auto", metadata=_doc("auto, cpu, cuda or cuda:N"))
    threads: int | None = field(default=None, metadata=_doc("torch intra-op threads; null: torch's default"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = choices(f)
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{f.name}: {value!r} is not one of {list(allowed)}")
            if "range" in f.metadata:
                lo, hi, lo_open, hi_open = f.metadata["range"]
                inside = lo <= value <= hi and not (lo_open and value == lo) and not (hi_open and value == hi)
                if not inside:  # NOTE: written so that NaN is outside
                    interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
                    raise ConfigError(f"{f.name}: {value!r} is outside the allowed range {interval}")
        if any(w < 1 for w in self.widths):
            raise ConfigError(f"widths: every width must be a positive integer, got {list(self.widths)}")
        if self.alpha_epochs is not None and self.alpha_epochs < 1:
            raise ConfigError(f"alpha_epochs: must be at least 1 or null, got {self.alpha_epochs}")
        if self.infer_binary_steps is not None and self.infer_binary_steps < 0:
            raise ConfigError(f"infer_binary_steps: must be at least 0 or null, got {self.infer_binary_steps}")
        self._check_inference()
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads: must be at least 1 or null, got {self.threads}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda, cuda:N")
        if (why := method_class(self.method).config_error(self)) is not None:
            raise ConfigError(why)
        if (
            self.stream == "split"
            and self.data_root is None
            and self.source == "digits"
            and self.num_tasks * self.classes_per_task > 10
        ):
            raise ConfigError(
                f"num_tasks: a split of digits holds at most {10 // self.classes_per_task} tasks "
                f"of {self.classes_per_task} classes, got {self.num_tasks}"
            )

    def _check_inference(self) -> None:
        unknown = [r for r in self.infer_rules if r not in INFERENCE_RULES]
        if unknown:
            raise ConfigError(f"infer_rules: {unknown} not among {list(INFERENCE_RULES)}")
        if not self.infer_rules or len(set(self.infer_rules)) != len(self.infer_rules):
            raise ConfigError(f"infer_rules: expected one or more distinct rules, got {list(self.infer_rules)}")
        uses_g = [r for r in self.infer_rules if r.endswith("_g")]
        if uses_g and self.superfluous < 1:
            raise ConfigError(
                f"infer_rules: {uses_g} use SupSup's G objective, which needs superfluous output neurons; "
                f"set superfluous >= 1 (got {self.superfluous})"
            )
        if self.scenario != "GG" and not method_class(self.method).infers:
            raise ConfigError(
                f"scenario: {self.scenario} infers the task from stored per-task masks or coefficients; "
                f"method {self.method!r} stores none to infer from (use GG)"
            )

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def density(self) -> float:
        """Fraction of weights a mask keeps."""
        return 1.0 - self.sparsity

    # ---- loading --------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a mapping; unknown keys and ill-typed values raise `ConfigError` naming them."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of field: value, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; known keys: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
        """Load a YAML file (a mapping), then apply `overrides` on top."""
        data = read_yaml(path, error=ConfigError, what="config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value at the top level")
        return cls.from_dict({**data, **(overrides or {})})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)
        }

    def replace(self, **changes: Any) -> Config:
        return Config.from_dict({**self.to_dict(), **changes})

    def diff(self, other: Config | None = None) -> dict[str, Any]:
        """Fields that differ from `other` (default: the defaults)."""
        base = (other or Config()).to_dict()
        return {k: v for k, v in self.to_dict().items() if base[k] != v}

    def run_name(self) -> str:
        """Self-describing name: `key=value~...` of what differs from the defaults, then the seed."""
        parts = [
            f"{k}={'-'.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in self.diff().items()
            if k not in ("seed", "device", "threads", "data_root")
        ]
        return "~".join([*parts, f"seed={self.seed}"])


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check (and, for strings from the command line, parse) `value` against the field's type."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none") and optional):
        if optional:
            return None
        raise ConfigError(f"{name}: a value is required (got null)")
    base = (
        next((a for a in args if a is not type(None)), hint)
        if args and (typing.get_origin(hint) in (typing.Union, types.UnionType))
        else hint
    )
    origin = typing.get_origin(base)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        item = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of {'integers' if item is int else 'names'}, got {value!r}")
        return tuple(_coerce(name, v, item) for v in value)
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        try:
            result = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if result != result:
            raise ConfigError(f"{name}: expected a number, got NaN")
        return result
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value
