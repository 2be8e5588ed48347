"""(c) What stored impressions and tasks cost: bits per masked weight, and growth per task.

Targets: a stored mask takes 1 bit per masked weight, in memory and in a saved state
dict; over 1,000 ImpressLearn tasks the run grows by the coefficients of each task, not by a mask
per task. The tasks are learned for real (`ImpressLearn.learn`, one step each) on a permuted stream
over a small random source (what a task stores does not depend on its data).
"""

from __future__ import annotations

import io

import torch
from torch import nn

from bench.report import Figure
from bench.steps import backbone, store_random_bank
from impress.backbones import build_backbone
from impress.config import Config
from impress.layers import masked_layers
from impress.methods import ImpressLearn
from impress.seeding import generator
from impress.streams import STREAMS, Source, Stream, Task

__all__ = ["FIGURES", "run"]

FIGURES = ("bank/bits_in_memory", "bank/bits_in_state_dict", "tasks/bytes_per_task", "tasks/vs_supsup")
BANK_MASKS = 32
TASKS = 1000


def _saved_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def _tensor_bytes(module: nn.Module) -> int:
    return sum(t.nbytes for t in module.state_dict().values())


def _bank_figures() -> list[Figure]:
    net = backbone("fc1024", (1, 28, 28))
    masked = sum(layer.weight.numel() for layer in masked_layers(net))
    empty_saved = _saved_bytes(net)
    store_random_bank(net, BANK_MASKS)
    per_mask_weight = BANK_MASKS * masked
    in_memory = 8 * sum(layer.bank.nbytes for layer in masked_layers(net)) / per_mask_weight
    in_file = 8 * (_saved_bytes(net) - empty_saved) / per_mask_weight
    where = f"{BANK_MASKS} masks over the {masked:,} masked weights of fc1024"
    return [
        Figure("bank/bits_in_memory", "bits per masked weight of a stored mask, in memory", in_memory, "bit",
               ("<=", 1.0), detail=where),
        Figure("bank/bits_in_state_dict", "bits per masked weight of a stored mask, in a saved state dict",
               in_file, "bit", ("<=", 1.01), detail=f"{where}; file growth incl. serialisation framing"),
    ]  # fmt: skip


def _stream(kind: str, tasks: int, seed: int) -> Stream:
    """`tasks` tasks of kind `kind` over 64 random 8x8 images of 10 classes."""
    g = generator("bench_source", seed)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.arange(64) % 10
    source = Source("random", x, y, x, y, x, y, num_classes=10)  # one set of images serves every split
    specs, num_classes = STREAMS[kind](source, tasks, seed)
    stream = Stream(kind, source, [], num_classes, seed, mean=float(x.mean()), std=float(x.std()))
    stream.tasks = [Task(t.index, t.name, t.num_classes, t.transform, stream=stream) for t in specs]
    return stream


def _task_figures(tasks: int) -> list[Figure]:
    cfg = Config(
        stream="permuted",
        num_tasks=tasks,
        method="impresslearn",
        impressions="random",
        m=BANK_MASKS,
        granularity="layer",
        alpha_epochs=1,
        batch_size=64,  # one step per task: the figure is about what a task stores, not accuracy
    )
    stream = _stream(cfg.stream, tasks, cfg.seed)
    net = build_backbone(cfg.backbone, in_shape=stream.in_shape, num_classes=stream.num_classes, seed=cfg.seed)
    method = ImpressLearn(cfg, net)
    before_mem, before_file = _tensor_bytes(method), _saved_bytes(method)
    for task in stream:
        method.learn(task, lambda event: None)
    assert method.tasks_learned == tasks
    per_task_mem = (_tensor_bytes(method) - before_mem) / tasks
    per_task_file = (_saved_bytes(method) - before_file) / tasks
    coeff_bytes = method.layout.size * method.coeffs.element_size()
    before = _tensor_bytes(method)
    for layer in masked_layers(net):  # what SupSup adds per task: one more stored mask in every layer
        layer.store_mask(torch.ones_like(layer.weight, dtype=torch.bool))
    supsup_task = _tensor_bytes(method) - before
    net_desc = f"mlp {'-'.join(map(str, [64, *cfg.widths, 10]))}, m={cfg.m} {cfg.granularity} coefficients"
    return [
        Figure("tasks/bytes_per_task", f"state growth per ImpressLearn task over {tasks:,} tasks (in memory)",
               per_task_mem, "B", ("<=", coeff_bytes),
               detail=f"{net_desc}: coefficients {coeff_bytes} B/task; saved state dict grows "
               f"{per_task_file:,.0f} B/task; {tasks:,} tasks: +{per_task_mem * tasks / 1024:,.1f} KiB"),
        Figure("tasks/vs_supsup", "per-task growth, SupSup (a bit-packed mask per task) / ImpressLearn",
               supsup_task / per_task_mem, "x", None,
               detail=f"SupSup: {supsup_task:,} B/task, {tasks:,} tasks: {supsup_task * tasks / 2**20:,.1f} MiB"),
    ]  # fmt: skip


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    return _bank_figures() + _task_figures(TASKS)
