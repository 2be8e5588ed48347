"""Continual-learning methods over a masked backbone: what each learns per task, and how each task
is computed afterwards.

supsup        a dedicated top-k supermask per task (bank row t solves task t)
impresslearn  a bank of m impressions; later tasks learn only mixing coefficients
finetune      the dense backbone trained task after task (the forgetting lower bound)

A method is an `nn.Module` whose buffers (and its backbone's) hold all per-task state, so its
`state_dict` is the whole checkpoint. `view(t)` is the scope in which the backbone computes task t.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from impress.coefficients import CoeffLayout
from impress.config import Config
from impress.layers import GrowingBuffers, Stored, Threshold, TopK, masked_layers, task_norms, task_view
from impress.masks import keep_count
from impress.seeding import generator
from impress.streams import Task, batches

__all__ = ["SupSup", "ImpressLearn", "Finetune", "METHODS", "OPTIMIZERS", "DivergedError", "train_epochs"]

Progress = Callable[[dict], None]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


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
def _calibrate_norms(net: nn.Module, task: Task, cfg: Config) -> None:
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


class _MaskMethod(nn.Module):
    """Shared mechanics of mask-learning methods: learn a dedicated supermask for a task."""

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__()
        self.cfg, self.net = cfg, net
        self.layers = masked_layers(net)

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
            _calibrate_norms(self.net, task, self.cfg)

    def masks_learned(self) -> int:
        return self.layers[0].bank.shape[0]


class SupSup(_MaskMethod):
    """One dedicated supermask per task: bank row t of every masked layer solves task t."""

    def learn(self, task: Task, progress: Progress) -> None:
        row = self._learn_mask(task, progress)
        assert row == task.index, f"bank row {row} for task {task.index}: tasks must be learned in order"
        self._finish_task(task, task_view(self.net, Stored(row)))

    @property
    def tasks_learned(self) -> int:
        return self.masks_learned()

    def view(self, t: int) -> AbstractContextManager:
        return task_view(self.net, Stored(t), bn_task=t)


class ImpressLearn(GrowingBuffers, _MaskMethod):
    """A bank of m impressions; a task is a real-valued combination of them.

    The first `n_dedicated` tasks are solved by their own stored mask (heterogeneous: the m
    impressions are those masks; homogeneous: task 0's first mask; random: none). Every later
    task t stores only its coefficients, row `t - n_dedicated` of the buffer:

    coeffs  (tasks_with_coefficients, layout.size) float32: effective mixing coefficients
    """

    growing_buffers = ("coeffs",)

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__(cfg, net)
        self.layout = CoeffLayout(
            [layer.weight.shape[0] for layer in self.layers], cfg.m, cfg.granularity, param=cfg.alpha_param
        )
        self.n_dedicated = {"heterogeneous": cfg.m, "homogeneous": 1, "random": 0}[cfg.impressions]
        device = self.layers[0].weight.device
        self.register_buffer("coeffs", torch.zeros(0, self.layout.size, device=device))
        if cfg.impressions == "random":
            self._draw_random_bank()

    def _draw_random_bank(self) -> None:
        """m random masks at exactly the configured density, from the seed (so they cost a seed)."""
        for i, layer in enumerate(self.layers):
            n = layer.weight.numel()
            k = keep_count(n, self.cfg.density)
            for r in range(self.cfg.m):
                keep = torch.randperm(n, generator=generator("random_bank", self.cfg.seed, r, i))[:k]
                mask = torch.zeros(n, dtype=torch.bool)
                mask[keep] = True
                layer.store_mask(mask.view(layer.weight.shape))

    @property
    def tasks_learned(self) -> int:
        if self.cfg.impressions == "random":
            return self.coeffs.shape[0]
        return min(self.masks_learned(), self.n_dedicated) + self.coeffs.shape[0]

    def learn(self, task: Task, progress: Progress) -> None:
        t, cfg = task.index, self.cfg
        if t < self.n_dedicated:
            if cfg.impressions == "homogeneous":  # m masks on task 0, differing in score init and order
                for r in range(cfg.m):
                    self._learn_mask(task, progress, replica=r, phase=f"impression {r + 1}/{cfg.m}")
            else:
                self._learn_mask(task, progress)
            self._finish_task(task, task_view(self.net, Stored(t)))
            return
        raw = nn.Parameter(self.layout.initial(self.coeffs.device))

        def forward(x: torch.Tensor) -> torch.Tensor:
            with task_view(self.net, self.layout.sources(self.layout.coefficients(raw))):
                return self.net(x)

        self.net.train()
        train_epochs(
            forward,
            [raw],
            task,
            cfg,
            lr=cfg.alpha_lr,
            epochs=cfg.alpha_epochs or cfg.epochs,
            g=generator("order", cfg.seed, t, 0),
            progress=progress,
            phase="coefficients",
        )
        alpha = self.layout.coefficients(raw).detach()
        self.coeffs = torch.cat([self.coeffs, alpha.unsqueeze(0)])
        self._finish_task(task, task_view(self.net, self.layout.sources(alpha)))

    def view(self, t: int) -> AbstractContextManager:
        if t < self.n_dedicated:
            return task_view(self.net, Stored(t), bn_task=t)
        return task_view(self.net, self.layout.sources(self.coeffs[t - self.n_dedicated]), bn_task=t)


class Finetune(nn.Module):
    """The dense backbone's weights trained on each task in turn: no per-task state, forgets."""

    def __init__(self, cfg: Config, net: nn.Module) -> None:
        super().__init__()
        self.cfg, self.net = cfg, net
        for layer in masked_layers(net):
            layer.weight.requires_grad_(True)
        self.register_buffer("tasks_done", torch.zeros((), dtype=torch.long))

    @property
    def tasks_learned(self) -> int:
        return int(self.tasks_done)

    def learn(self, task: Task, progress: Progress) -> None:
        self.net.train()
        with task_view(self.net, None):
            train_epochs(
                self.net,
                [layer.weight for layer in masked_layers(self.net)],
                task,
                self.cfg,
                lr=self.cfg.lr,
                epochs=self.cfg.epochs,
                g=generator("order", self.cfg.seed, task.index, 0),
                progress=progress,
                phase="weights",
            )
            _calibrate_norms(self.net, task, self.cfg)
        self.tasks_done += 1

    def view(self, t: int) -> AbstractContextManager:
        return task_view(self.net, None, bn_task=t)


METHODS: dict[str, Callable[[Config, nn.Module], nn.Module]] = {
    "supsup": SupSup,
    "impresslearn": ImpressLearn,
    "finetune": Finetune,
}
