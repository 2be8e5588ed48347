"""The sequential task-stream trainer: `run(cfg, report) -> Result`.

    for task in stream:
        method.learn(task)                  # what the method trains, on the task's train split
        R[t, :t+1] = evaluate all seen tasks, on validation and on test
        checkpoint                          # a later run resumes here, bit-identically
        report(metrics with step = t)       # Ray, the CLI and the tests each pass their own

Every metric names its split: `val/...` (what studies choose on) and `test/...` (what results
report); `bits/...` and `time/...` depend on no data split.

Task identity is given at training; at test it is given (GG) or, after the last task, inferred
by each of `cfg.infer_rules` (GNs, GNu: `impress.inference`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from impress.backbones import build_backbone
from impress.checkpoint import CheckpointError, load_checkpoint, load_method_state, method_state, save_checkpoint
from impress.config import INFERENCE_FIELDS, Config
from impress.inference import evaluate_inference
from impress.layers import Stored, masked_layers, task_view
from impress.methods import METHODS, Method
from impress.metrics import summary
from impress.provenance import provenance
from impress.streams import Stream, Task, build_stream

EVAL_SPLITS = ("val", "test")  # every reported accuracy is measured on both (`val/...`, `test/...`)

__all__ = ["Result", "run", "build", "evaluate", "resolve_device"]

Report = Callable[[dict[str, Any]], None]


@dataclass
class Result:
    config: dict[str, Any]
    acc_matrix: list[list[float]]  # R[i][j] on the test split, NaN above the diagonal
    metrics: dict[str, float]
    overhead: dict[str, Any]
    task_seconds: list[float]
    stream: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    val_acc_matrix: list[list[float]] = field(default_factory=list)  # the same on the validation split

    def to_json(self) -> str:
        def clean(x: Any) -> Any:  # JSON has no NaN: write null
            if isinstance(x, float) and x != x:
                return None
            if isinstance(x, list):
                return [clean(v) for v in x]
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return x

        return json.dumps(clean(asdict(self)), indent=2)

    def write(self, directory: str | Path) -> None:
        """results.json, acc_matrix.csv (test) and val_acc_matrix.csv (rows: after task i; columns:
        task j)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "results.json").write_text(self.to_json())
        for name, matrix in (("acc_matrix", self.acc_matrix), ("val_acc_matrix", self.val_acc_matrix)):
            R = np.array(matrix, dtype=float)
            header = ",".join(f"task_{j:03d}" for j in range(R.shape[1]))
            np.savetxt(directory / f"{name}.csv", R, delimiter=",", header=header, comments="", fmt="%.6f")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


def build(cfg: Config, device: torch.device) -> tuple[Stream, Method]:
    """The stream and the method (with its backbone) a config describes."""
    stream = build_stream(
        cfg.stream,
        cfg.source,
        num_tasks=cfg.num_tasks,
        seed=cfg.seed,
        data_root=cfg.data_root,
        download=cfg.download,
        device=device,
        classes_per_task=cfg.classes_per_task,
        split_labels=cfg.split_labels,
        task_order=cfg.task_order,
    )
    net = build_backbone(
        cfg.backbone,
        in_shape=stream.in_shape,
        num_classes=stream.num_classes + cfg.superfluous,  # superfluous outputs: never a label
        seed=cfg.seed,
        widths=cfg.widths,
        per_task_bn=cfg.bn == "task",
        device=device,
    )
    return stream, METHODS[cfg.method](cfg, net)


@torch.no_grad()
def evaluate(
    method: nn.Module,
    task: Task,
    *,
    split: str = "test",
    view: AbstractContextManager | None = None,
    batch_size: int = 1024,
) -> float:
    """Accuracy on the task's `split` of the method's view of the task (or of `view`)."""
    x, y = task.data(split)
    method.eval()
    correct = 0
    with view if view is not None else method.view(task.index):
        for i in range(0, len(y), batch_size):
            logits = method.net(x[i : i + batch_size])[:, : task.stream.num_classes]  # not the superfluous
            correct += int((logits.argmax(dim=1) == y[i : i + batch_size]).sum())
    return correct / len(y)


def stored_mask_transfer(method: nn.Module, stream: Stream, *, split: str = "test") -> np.ndarray:
    """A[i, j] = accuracy on task j's `split` of stored mask i alone, for methods whose mask i was learned on
    task i (SupSup, heterogeneous ImpressLearn), with task i's BN statistics.

    The diagonal is each mask on its own task; off the diagonal, how much a foreign impression
    transfers. Near chance off the diagonal means a combination's accuracy comes from combining."""
    n = min(masked_layers(method.net)[0].bank.shape[0], len(stream))
    A = np.full((n, len(stream)), np.nan)
    for i in range(n):
        for j in range(len(stream)):
            A[i, j] = evaluate(method, stream[j], split=split, view=task_view(method.net, Stored(i), bn_task=i))
    return A


def _inferred(cfg: Config, method: nn.Module, stream: Stream) -> dict[str, float]:
    """GN scenarios: task-identity inference over the learned stream (`impress.inference`) on each
    evaluation split; GG: none. Inference's wall time is the test split's."""
    if cfg.scenario == "GG":
        return {}
    out: dict[str, float] = {}
    for split in EVAL_SPLITS:
        for k, v in evaluate_inference(method, stream, cfg, scenarios=(cfg.scenario,), split=split).items():
            if not k.startswith("time/"):
                out[f"{split}/{k}"] = v
            elif split == "test":
                out[k] = v
    return out


def _split_metrics(Rs: dict[str, np.ndarray], t: int, dedicated: int) -> dict[str, float]:
    """Each split's per-task accuracies and summary after task t, under the split's prefix."""
    out: dict[str, float] = {}
    for split, R in Rs.items():
        out.update({f"{split}/acc/task_{j:03d}": R[t, j] for j in range(t + 1)})
        out.update({f"{split}/{k}": v for k, v in summary(R[: t + 1, : t + 1], dedicated_tasks=dedicated).items()})
    return out


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("device", "threads", *INFERENCE_FIELDS)}


def run(
    cfg: Config,
    report: Report = lambda metrics: None,
    *,
    progress: Report = lambda event: None,
    checkpoint_dir: str | Path | None = None,
) -> Result:
    """Learn the config's task stream in order; returns the accuracy matrix and the metrics.

    With `checkpoint_dir`, state is saved after every task and a run finding a checkpoint there
    continues after its last finished task (with the same results as an uninterrupted run); its
    first report repeats that task's, which the stop may have kept from reaching anyone."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    stream, method = build(cfg, device)
    T = len(stream)
    Rs = {split: np.full((T, T), np.nan) for split in EVAL_SPLITS}
    seconds: list[float] = []
    start = 0
    if checkpoint_dir is not None and (ckpt := load_checkpoint(checkpoint_dir)) is not None:
        # NOTE: a field the checkpoint lacks was added to `Config` after it was written, with a default
        # that computes what was computed before
        stored = _comparable({**Config().to_dict(), **ckpt["config"]})
        if stored != _comparable(cfg.to_dict()):
            diff = {k for k, v in _comparable(cfg.to_dict()).items() if stored.get(k) != v}
            raise CheckpointError(
                f"{checkpoint_dir}: the checkpoint was written by a different config (differs in {sorted(diff)})"
            )
        if "val_acc_matrix" not in ckpt:
            raise CheckpointError(
                f"{checkpoint_dir}: the checkpoint has no validation accuracies (it predates the validation "
                f"split, and so does its training split); delete it to start the run afresh"
            )
        load_method_state(method, ckpt["method"])
        start = ckpt["tasks_done"]
        for split, R in Rs.items():
            R[:start, :start] = np.array(ckpt["acc_matrix" if split == "test" else f"{split}_acc_matrix"], dtype=float)
        seconds = list(ckpt["task_seconds"])
    bits = method.bits()
    dedicated = method.dedicated_tasks(cfg, T)

    def row(t: int, inferred: dict[str, float]) -> dict[str, Any]:
        """What is reported after task t: bookkeeping, then the metrics of R's first t + 1 rows."""
        return {
            "step": t,
            "task": stream[t].name,
            "tasks_done": t + 1,
            "num_tasks": T,
            "resumed_from": start,
            **_split_metrics(Rs, t, dedicated),
            "bits/per_task": bits.per_task_bits,
            "bits/total": bits.total_bits(t + 1),
            "time/task_s": seconds[t],
            **inferred,
        }

    inferred: dict[str, float] = {}
    if start:
        # NOTE: a stop between a checkpoint and its report loses that report, so a resumed run repeats
        # it first (trackers take each step once). Resumed after the last task, nothing is learned
        # again: this is the final report, with the task identities inferred.
        inferred = _inferred(cfg, method, stream) if start == T else {}
        report(row(start - 1, inferred))
    for t in range(start, T):
        began = time.perf_counter()
        method.learn(stream[t], progress)
        seconds.append(time.perf_counter() - began)
        for split, R in Rs.items():
            for j in range(t + 1):
                R[t, j] = evaluate(method, stream[j], split=split)
        # NOTE: state is on disk before the report, so a report always has a checkpoint behind it
        if checkpoint_dir is not None:
            save_checkpoint(
                checkpoint_dir,
                {
                    "config": cfg.to_dict(),
                    "tasks_done": t + 1,
                    "acc_matrix": Rs["test"][: t + 1, : t + 1].tolist(),
                    "val_acc_matrix": Rs["val"][: t + 1, : t + 1].tolist(),
                    "task_seconds": seconds,
                    "method": method_state(method),
                },
            )
        if t == T - 1:  # the stream is learned: infer task identities (GN scenarios)
            inferred = _inferred(cfg, method, stream)
        report(row(t, inferred))

    return Result(
        config=cfg.to_dict(),
        acc_matrix=Rs["test"].tolist(),
        val_acc_matrix=Rs["val"].tolist(),
        metrics={k: v for k, v in _split_metrics(Rs, T - 1, dedicated).items() if "/task_" not in k} | inferred,
        overhead=bits.as_dict(T),
        task_seconds=seconds,
        stream=stream.identity(),
        provenance={**provenance(device), "seed": cfg.seed, "n_seeds": 1},
    )
