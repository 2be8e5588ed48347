"""What every method is, and the mechanics several share.

A method is an `nn.Module` whose buffers (and its backbone's) hold all per-task state, so its
`state_dict` is the whole checkpoint. It owns its semantics: the trainer, the bit counts, task
inference, config validation, reports and tables ask the method, never its name.

    learn(task, progress)      train on the task's train split and store what the task needs
    view(t)                    the scope in which the backbone computes task t
    tasks_learned              how many tasks are stored
    bits()                     exact `Overhead`: bits stored per task and once
    task_basis(unit_gain)      the stored tasks as rows a task-identity search superposes
    dedicated_tasks(cfg, T)    how many of the first tasks learned keep full state of their own
    config_error(cfg)          why a config cannot run this method (None: it can)
    variant(row)               the method's name in tables and figures, for a row of a trial table
    uses                       the config fields only this method reads (blank in its rows)
    ignores(row)               those of them a particular config leaves unread (blank there too)
    examples                   config overrides that exercise each of its variants (shared tests)
    infers, forgets            whether it has a task basis; whether learning can change old tasks
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from impress.layers import Threshold, TopK, masked_layers, task_norms, task_view
from impress.seeding import generator
from impress.streams import Task, batches

if TYPE_CHECKING:
    from impress.basis import TaskBasis
    from impress.config import Config
    from impress.overhead import Overhead

__all__ = ["Method", "MaskLearning", "OPTIMIZERS", "DivergedError", "Progress", "train_epochs", "calibrate_norms"]

Progress = Callable[[dict], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class Method(nn.Module):
    """The protocol every registered method follows (see the module docstring)."""

    label: ClassVar[str]  # its name in tables and figures
    doc: ClassVar[str]  # one line: what it stores per task
    uses: ClassVar[tuple[str, ...]] = ()
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    infers: ClassVar[bool] = False  # whether `task_basis` exists (GN scenarios)
    forgets: ClassVar[bool] = False  # learning a task may change an earlier one (finetune)
    stores_weights: bool = False  # the backbone's weights are learned state (checkpointed), not the seed's

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__()
        self.cfg, self.net = cfg, net
        self.layers = masked_layers(net)

    # ---- what a config means for the method (no model needed) ---------------------------------
    @classmethod
    def config_error(cls, cfg: Config) -> str | None:
        return None

    @classmethod
    def dedicated_tasks(cls, cfg: Config, num_tasks: int) -> int:
        return 0

    @classmethod
    def variant(cls, row: Mapping[str, Any]) -> str:
        return cls.label

    @classmethod
    def ignores(cls, row: Mapping[str, Any]) -> tuple[str, ...]:
        return ()

    # ---- learning and computing tasks -------------------------------------------------------
    @property
    def tasks_learned(self) -> int:
        raise NotImplementedError

    def learn(self, task: Task, progress: Progress) -> None:
        raise NotImplementedError

    def view(self, t: int) -> AbstractContextManager:
        raise NotImplementedError

    def bits(self) -> Overhead:
        raise NotImplementedError

    def task_basis(self, *, unit_gain: bool = True) -> TaskBasis:
        raise TypeError(f"{self.label} stores no per-task masks or coefficients to infer a task from")


def _fusable(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused (one kernel per step) optimizer can take `params`: floating point, all
    on the CPU or all on CUDA."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


# NOTE: fused where torch has it. Measured on one core (FC-1024-1024's 1.86M weights): an Adam step
# 4.3 -> 1.2 ms, SGD with momentum 1.5 -> 0.9 ms; on 64-256-256-10, Adam 0.24 -> 0.09 ms. Its
# updates equal the unfused ones to float rounding (2e-7 after 50 steps), not bit for bit.
OPTIMIZERS = {
    "adam": lambda params, cfg, lr: torch.optim.Adam(params, lr=lr, fused=_fusable(params)),
    "sgd": lambda params, cfg, lr: torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, fused=_fusable(params)),
    "rmsprop": lambda params, cfg, lr: torch.optim.RMSprop(params, lr=lr),
}


def train_epochs(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: Iterable[nn.Parameter],
    task: Task,
    cfg: Config,
    *,
    lr: float,
    epochs: int,
    g: torch.Generator,
    progress: Progress,
    phase: str,
) -> float:
    """Minimise cross-entropy of `forward` on the task's training data; returns the last epoch's mean loss."""
    x, y = task.train_data()
    opt = OPTIMIZERS[cfg.optimizer](list(params), cfg, lr)
    mean_loss = float("nan")
    for epoch in range(epochs):
        total = torch.zeros((), device=y.device)
        for xb, yb in batches(x, y, cfg.batch_size, g):
            loss = F.cross_entropy(forward(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(yb)
        mean_loss = float(total) / len(y)  # one sync per epoch, not per step
        if mean_loss != mean_loss or mean_loss in (float("inf"), float("-inf")):
            raise DivergedError(
                f"task {task.index} ({task.name}): training loss became {mean_loss} in "
                f"{phase} epoch {epoch + 1}; lower the learning rate (lr={lr})"
            )
        progress({"task": task.index, "phase": phase, "epoch": epoch + 1, "epochs": epochs, "loss": mean_loss})
    return mean_loss


@torch.no_grad()
def calibrate_norms(net: nn.Module, task: Task, cfg: Config) -> None:
    """Recompute per-task BN statistics with the final mask (a cumulative average over the train set)."""
    norms = [n for n in task_norms(net) if n.per_task]
    if not norms:
        return
    for n in norms:
        n.reset_running_stats()
        n.momentum = None
    x, _ = task.train_data()
    net.train()
    for i in range(0, len(x), cfg.batch_size):
        net(x[i : i + cfg.batch_size])
    for n in norms:
        n.momentum = 0.1
        n.store_stats()


class MaskLearning(Method):
    """Shared mechanics of mask-learning methods: learn a dedicated supermask for a task."""

    def _mask_source(self) -> TopK | Threshold:
        return TopK(self.cfg.density) if self.cfg.mask == "topk" else Threshold()

    def _learn_mask(self, task: Task, progress: Progress, *, replica: int = 0, phase: str = "mask") -> int:
        """Train fresh scores on `task`, store the final mask in every layer's bank; returns its row."""
        cfg = self.cfg
        for i, layer in enumerate(self.layers):
            layer.reset_scores(generator("scores", cfg.seed, task.index, replica, i))
        source = self._mask_source()
        self.net.train()
        with task_view(self.net, source):
            train_epochs(
                self.net,
                [layer.scores for layer in self.layers],
                task,
                cfg,
                lr=cfg.lr,
                epochs=cfg.epochs,
                g=generator("order", cfg.seed, task.index, replica),
                progress=progress,
                phase=phase,
            )
        rows = {layer.store_mask(source(layer).detach()) for layer in self.layers}
        (row,) = rows  # every layer's bank grows in step
        return row

    def _finish_task(self, task: Task, view: AbstractContextManager) -> None:
        with view:
            calibrate_norms(self.net, task, self.cfg)

    def masks_learned(self) -> int:
        return self.layers[0].bank.shape[0]
