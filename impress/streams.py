"""Task streams: permuted, rotated and split tasks over an image source, deterministic in the seed.

A source is loaded once as raw [0, 1] images (N, C, H, W) with a fixed train / validation / test
split (`SPLITS`): training sees train only, studies choose on validation, results report test.
Each task is the source under a transform (a pixel permutation, a rotation, a class subset); a
task's tensors are materialised on demand on the stream's device, so a stream of hundreds of
permuted-MNIST tasks does not hold hundreds of copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from impress.data_root import resolve_data_root
from impress.seeding import generator

__all__ = [
    "Source",
    "Task",
    "Stream",
    "SOURCES",
    "SPLITS",
    "STREAMS",
    "TASK_ORDERS",
    "DatasetMissingError",
    "build_stream",
    "batches",
    "learning_order",
]

SPLIT_SEED = 0  # the train / validation / test split of a source never changes with the run's seed
SPLITS = ("train", "val", "test")
TASK_ORDERS = ("sequential", "shuffled")


class DatasetMissingError(FileNotFoundError):
    """A torchvision dataset is not under the data root (`data_root`, else the default data folder)."""


@dataclass(frozen=True)
class Source:
    """Raw images in [0, 1] (N, C, H, W) and labels, split once into train, validation and test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of one split: "train", "val" or "test"."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """x and y of every split, in `SPLITS` order (what the constructor takes after the name)."""
        return tuple(t for name in SPLITS for t in self.split(name))


def _stratified(y: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held out) of a seeded, stratified split holding out `share` of `y`."""
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(
        torch.arange(len(y)).numpy(), test_size=share, stratify=y.numpy(), random_state=SPLIT_SEED
    )
    return torch.as_tensor(kept), torch.as_tensor(held)


def _digits(root: str | None = None, download: bool = False) -> Source:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), split 60/20/20 stratified:
    20% test, then a quarter of the rest (20% of all) validation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.long)
    rest, test = _stratified(y, 0.2)
    train, val = (rest[i] for i in _stratified(y[rest], 0.25))
    return Source("digits", x[train], y[train], x[val], y[val], x[test], y[test], num_classes=10)


def _missing(name: str, cls_name: str, how: str, fetch: str | None, root: str | None, err: Exception) -> str:
    """Where `cls_name` was looked for, and how to get it there."""
    folder = resolve_data_root(root).resolve()
    default = " (the default data folder: $IMPRESS_DATA, else ~/.cache/impress/data)" if root is None else ""
    if fetch:
        obtain = f"Get it with `{fetch}`" if root is None else f"Get it with `{fetch} --root {root}`"
    else:
        obtain = (
            f"Obtain it with `impress run --source {name} --data_root {folder} --download true` "
            f"on a machine with internet access"
        )
    return f"{cls_name} not found under {folder}{default}: {err}. {obtain}, or copy it there ({how})."


def _last_sixth(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation is the last sixth of the training images in the dataset's own order: MNIST's
    classic split, its last 10,000 of 60,000."""
    n = len(y) - len(y) // 6
    return torch.arange(n), torch.arange(n, len(y))


def _share(share: float) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Validation is a seeded, stratified `share` of the training images."""
    return lambda y: _stratified(y, share)


def _torchvision(
    name: str,
    cls_name: str,
    num_classes: int,
    how: str,
    val: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    *,
    fetch: str | None = None,
) -> Callable[..., Source]:
    """A torchvision dataset under `root` (None: the default data folder), its training images split
    into train and validation by `val`; `fetch` is the command that puts it there without internet
    access, if there is one."""

    def load(root: str | None = None, download: bool = False) -> Source:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        parts = []
        for train in (True, False):
            try:
                ds = cls(root=resolve_data_root(root), train=train, download=download)
            except RuntimeError as err:
                raise DatasetMissingError(_missing(name, cls_name, how, fetch, root, err)) from None
            x = torch.as_tensor(ds.data)
            x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
            parts += [x.float() / 255.0, torch.as_tensor(ds.targets, dtype=torch.long)]
        x, y, x_test, y_test = parts
        train, held = val(y)
        return Source(name, x[train], y[train], x[held], y[held], x_test, y_test, num_classes=num_classes)

    return load


# NOTE: how each source is split is part of its results' identity: change it and results change
SOURCES: dict[str, Callable[..., Source]] = {
    "digits": _digits,
    "mnist": _torchvision("mnist", "MNIST", 10, "<root>/MNIST/raw/*-ubyte", _last_sixth, fetch="impress data mnist"),
    "fashion_mnist": _torchvision("fashion_mnist", "FashionMNIST", 10, "<root>/FashionMNIST/raw/*-ubyte", _last_sixth),
    "cifar10": _torchvision("cifar10", "CIFAR10", 10, "<root>/cifar-10-batches-py/", _share(0.1)),
    "cifar100": _torchvision("cifar100", "CIFAR100", 100, "<root>/cifar-100-python/", _share(0.1)),
}


# ---------------------------------------------------------------------------------------------
# Tasks


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate images (N, C, H, W) about their centre, bilinear, zero (background) fill."""
    if degrees % 360 == 0:
        return x
    t = math.radians(degrees)
    theta = torch.tensor(
        [[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]], dtype=x.dtype, device=x.device
    )
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class Task:
    """One task: the source's data under `transform`, optionally restricted to `classes`."""

    index: int
    name: str
    num_classes: int
    transform: Callable[[torch.Tensor], torch.Tensor]
    classes: tuple[int, ...] | None = None  # split tasks: the source classes it holds
    remap: bool = True  # split tasks: labels become 0..len(classes)-1
    stream: Stream | None = field(default=None, repr=False, compare=False)

    def _select(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.classes is not None:
            classes = torch.tensor(self.classes, device=y.device)
            keep = torch.isin(y, classes)
            x, y = x[keep], y[keep]
            if self.remap:
                y = (y.unsqueeze(1) == classes).long().argmax(dim=1)
        s = self.stream
        return (self.transform(x) - s.mean) / s.std, y

    def data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (N, C, H, W) normalised, y (N,)) of one split, on the stream's device."""
        return self._select(*self.stream.source.split(split))

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data("train")

    def val_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data("val")

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data("test")


@dataclass
class Stream:
    """A sequence of tasks over one source (held on `device`)."""

    kind: str
    source: Source
    tasks: list[Task]
    num_classes: int  # output units the model needs
    seed: int
    mean: float
    std: float
    task_order: str = "sequential"

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.source.in_shape

    def identity(self) -> dict[str, object]:
        """What identifies this stream's data (for provenance)."""
        return {
            "stream": self.kind,
            "source": self.source.name,
            "tasks": len(self.tasks),
            "seed": self.seed,
            "task_order": self.task_order,
            "train_size": len(self.source.y_train),
            "val_size": len(self.source.y_val),
            "test_size": len(self.source.y_test),
            "task_names": [t.name for t in self.tasks],
        }


def _permuted(source: Source, num_tasks: int, seed: int, **_) -> tuple[list[Task], int]:
    n_pixels = math.prod(source.in_shape)

    def permute(perm: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: x.flatten(start_dim=1)[:, perm.to(x.device)].view_as(x)

    tasks = [
        Task(
            t,
            f"permuted_{t:03d}",
            source.num_classes,
            permute(torch.randperm(n_pixels, generator=generator("permutation", seed, t))),
        )
        for t in range(num_tasks)
    ]
    return tasks, source.num_classes


def _rotated(source: Source, num_tasks: int, seed: int, **_) -> tuple[list[Task], int]:
    step = 360.0 / num_tasks
    tasks = [
        Task(t, f"rotated_{t * step:05.1f}deg", source.num_classes, lambda x, a=t * step: _rotate(x, a))
        for t in range(num_tasks)
    ]
    return tasks, source.num_classes


def _split(
    source: Source, num_tasks: int, seed: int, *, classes_per_task: int = 2, split_labels: str = "remap", **_
) -> tuple[list[Task], int]:
    if num_tasks * classes_per_task > source.num_classes:
        raise ValueError(
            f"split stream: {num_tasks} tasks x {classes_per_task} classes exceeds the "
            f"{source.num_classes} classes of {source.name!r}"
        )
    remap = split_labels == "remap"
    tasks = []
    for t in range(num_tasks):
        classes = tuple(range(t * classes_per_task, (t + 1) * classes_per_task))
        tasks.append(
            Task(
                t,
                f"split_{'-'.join(map(str, classes))}",
                classes_per_task if remap else source.num_classes,
                lambda x: x,
                classes=classes,
                remap=remap,
            )
        )
    return tasks, classes_per_task if remap else source.num_classes


STREAMS: dict[str, Callable[..., tuple[list[Task], int]]] = {
    "permuted": _permuted,
    "rotated": _rotated,
    "split": _split,
}


def learning_order(num_tasks: int, task_order: str, seed: int) -> list[int]:
    """The stream's tasks (their positions in the stream's own order: a rotated stream's task k is
    at k * 360 / T degrees) in the order they are learned."""
    if task_order not in TASK_ORDERS:
        raise KeyError(f"unknown task order {task_order!r}; expected one of {list(TASK_ORDERS)}")
    if task_order == "sequential":
        return list(range(num_tasks))
    return torch.randperm(num_tasks, generator=generator("task_order", seed)).tolist()


def build_stream(
    kind: str,
    source: str,
    *,
    num_tasks: int,
    seed: int,
    data_root: str | None = None,
    download: bool = False,
    device: str | torch.device = "cpu",
    task_order: str = "sequential",
    **options,
) -> Stream:
    """The stream `kind` over `source`, its data resident on `device`.

    `task_order` "shuffled" learns the same tasks in a seeded random order (a task keeps its name,
    its index is its place in the order): on a rotated stream, the first tasks (heterogeneous
    ImpressLearn's impressions) are then spread over the circle instead of its first arc."""
    if kind not in STREAMS:
        raise KeyError(f"unknown stream {kind!r}; expected one of {sorted(STREAMS)}")
    if source not in SOURCES:
        raise KeyError(f"unknown source {source!r}; expected one of {sorted(SOURCES)}")
    if task_order not in TASK_ORDERS:
        raise KeyError(f"unknown task order {task_order!r}; expected one of {list(TASK_ORDERS)}")
    src = SOURCES[source](data_root, download)
    src = Source(src.name, *(t.to(device) for t in src.tensors()), num_classes=src.num_classes)
    tasks, num_classes = STREAMS[kind](src, num_tasks, seed, **options)
    tasks = [tasks[i] for i in learning_order(len(tasks), task_order, seed)]
    stream = Stream(kind, src, [], num_classes, seed, float(src.x_train.mean()), float(src.x_train.std()), task_order)
    stream.tasks = [
        Task(i, t.name, t.num_classes, t.transform, t.classes, t.remap, stream) for i, t in enumerate(tasks)
    ]
    return stream


def batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, g: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches by device-resident index (no DataLoader, no workers)."""
    order = torch.randperm(len(y), generator=g).to(y.device)
    for i in range(0, len(y), batch_size):
        idx = order[i : i + batch_size]
        yield x.index_select(0, idx), y.index_select(0, idx)  # 2x faster than x[idx] on CPU
