"""(d) The data path: device-resident batches by `randperm` indexing vs a DataLoader.

Target: `impress.streams.batches` at least 5x faster than
`DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)` over the same in-memory tensors.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench.report import Figure, ratio_figure
from bench.timing import side_by_side
from impress.seeding import generator
from impress.streams import batches

__all__ = ["FIGURES", "run"]

FIGURES = ("data/dataloader_vs_batches",)


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    n = 10_000 if quick else 60_000  # MNIST's training set
    g = generator("bench_data")
    x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    order = generator("bench_order")

    def resident() -> None:
        for _ in batches(x, y, 128, order):
            pass

    def dataloader() -> None:
        for _ in loader:
            pass

    name = FIGURES[0]
    ratio = side_by_side(resident, {name: dataloader}, repeats=max(3, repeats // 3), warmup=1, clock=clock)[name]
    what = f"epoch time, DataLoader(TensorDataset) / impress.streams.batches, {n:,} 1x28x28 images, batch 128"
    return [ratio_figure(name, what, ratio, (">=", 5.0), labels=("batches", "DataLoader"))]
