"""Task streams on real data: determinism in the seed, the transforms' identities, the fixed split."""

from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from impress.streams import SOURCES, STREAMS, DatasetMissingError, batches, build_stream, learning_order

TORCHVISION_SOURCES = [name for name in SOURCES if name != "digits"]


def _normalised_source(stream, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The stream's raw source images under the stream's normalisation, untransformed."""
    src = stream.source
    x, y = src.split(split)
    return (x - stream.mean) / stream.std, y


def _pixel_order(task, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The permutation a permuted task applies, read off by transforming an image of pixel indices."""
    n = int(np.prod(in_shape))
    index_image = torch.arange(n, dtype=torch.float32).view(1, *in_shape)
    return task.transform(index_image).flatten().long()  # (n,)


# ---------------------------------------------------------------------------------------------
# Every stream kind


@pytest.mark.parametrize("kind", list(STREAMS))
def test_stream_is_deterministic_in_its_seed(kind):
    a = build_stream(kind, "digits", num_tasks=3, seed=7)
    b = build_stream(kind, "digits", num_tasks=3, seed=7)
    assert len(a) == len(b) == 3
    assert [t.name for t in a] == [t.name for t in b]
    for ta, tb in zip(a, b):
        for split in ("train", "val", "test"):
            (xa, ya), (xb, yb) = ta.data(split), tb.data(split)
            assert torch.equal(xa, xb)
            assert torch.equal(ya, yb)


@pytest.mark.parametrize("kind", list(STREAMS))
def test_stream_shapes_and_identity(kind):
    stream = build_stream(kind, "digits", num_tasks=3, seed=0)
    assert stream.in_shape == (1, 8, 8)
    ident = stream.identity()
    assert ident["stream"] == kind and ident["tasks"] == 3 and ident["seed"] == 0
    assert ident["train_size"] + ident["val_size"] + ident["test_size"] == 1797
    assert ident["task_order"] == "sequential"
    for task in stream:
        x, y = task.train_data()
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        assert y.shape == (len(x),) and y.dtype == torch.long
        assert 0 <= int(y.min()) and int(y.max()) < stream.num_classes


def test_unknown_stream_or_source_is_a_key_error():
    with pytest.raises(KeyError, match="nope"):
        build_stream("nope", "digits", num_tasks=2, seed=0)
    with pytest.raises(KeyError, match="nope"):
        build_stream("permuted", "nope", num_tasks=2, seed=0)


# ---------------------------------------------------------------------------------------------
# Permuted


def test_permuted_tasks_permute_the_same_pixels():
    stream = build_stream("permuted", "digits", num_tasks=3, seed=0)
    x_src, y_src = _normalised_source(stream)
    orders = []
    for task in stream:
        x, y = task.train_data()
        assert torch.equal(y, y_src)
        # the multiset of pixel values of every image is unchanged
        assert torch.equal(x.flatten(1).sort(dim=1).values, x_src.flatten(1).sort(dim=1).values)
        # ... because one fixed pixel permutation is applied to every image
        order = _pixel_order(task, stream.in_shape)
        assert torch.equal(order.sort().values, torch.arange(64))
        assert torch.equal(x.flatten(1), x_src.flatten(1)[:, order])
        x_test, _ = task.test_data()
        x_src_test, _ = _normalised_source(stream, "test")
        assert torch.equal(x_test.flatten(1), x_src_test.flatten(1)[:, order])
        orders.append(order)
    for i in range(len(orders)):
        for j in range(i + 1, len(orders)):
            assert not torch.equal(orders[i], orders[j]), f"tasks {i} and {j} share a permutation"
            assert not torch.equal(stream[i].train_data()[0], stream[j].train_data()[0])


def test_permuted_seeds_give_different_permutations():
    a = build_stream("permuted", "digits", num_tasks=2, seed=0)
    b = build_stream("permuted", "digits", num_tasks=2, seed=1)
    for t in range(2):
        assert not torch.equal(_pixel_order(a[t], a.in_shape), _pixel_order(b[t], b.in_shape))
        assert not torch.equal(a[t].train_data()[0], b[t].train_data()[0])


# ---------------------------------------------------------------------------------------------
# Rotated


def test_rotated_task_zero_is_the_normalised_source():
    stream = build_stream("rotated", "digits", num_tasks=4, seed=0)
    for split, data in (("train", stream[0].train_data()), ("test", stream[0].test_data())):
        x_src, y_src = _normalised_source(stream, split)
        assert torch.equal(data[0], x_src)
        assert torch.equal(data[1], y_src)


def test_rotated_half_and_quarter_turns_move_pixel_centres_onto_pixel_centres():
    # NOTE: with align_corners=False the normalised pixel centres of an 8x8 image are symmetric
    # about 0, so a multiple of 90 degrees maps every sampling point onto a pixel centre and the
    # bilinear weights are 0/1. The only error is cos/sin(90k deg) ~ 1e-16 in theta, far below
    # float32 resolution; on torch 2.14 the result is bit-exact. 1e-6 leaves room for a backend
    # that rounds the grid differently while still catching any real interpolation (errors ~0.1).
    stream = build_stream("rotated", "digits", num_tasks=4, seed=0)
    x_src, y_src = _normalised_source(stream)
    assert [t.name for t in stream] == ["rotated_000.0deg", "rotated_090.0deg", "rotated_180.0deg", "rotated_270.0deg"]
    x2, y2 = stream[2].train_data()
    torch.testing.assert_close(x2, x_src.flip(-2, -1), rtol=0.0, atol=1e-6)
    assert torch.equal(y2, y_src)
    # 90 and 270 degrees are opposite quarter turns (whichever way the sign convention points)
    x1, _ = stream[1].train_data()
    x3, _ = stream[3].train_data()
    k = 1 if torch.allclose(x1, torch.rot90(x_src, 1, (-2, -1)), rtol=0.0, atol=1e-6) else -1
    torch.testing.assert_close(x1, torch.rot90(x_src, k, (-2, -1)), rtol=0.0, atol=1e-6)
    torch.testing.assert_close(x3, torch.rot90(x_src, -k, (-2, -1)), rtol=0.0, atol=1e-6)


def test_rotated_tasks_differ():
    stream = build_stream("rotated", "digits", num_tasks=3, seed=0)
    xs = [task.train_data()[0] for task in stream]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (xs[i] - xs[j]).abs().max() > 0.5


# ---------------------------------------------------------------------------------------------
# Split


def test_split_tasks_hold_disjoint_classes_remapped():
    stream = build_stream("split", "digits", num_tasks=5, seed=0, classes_per_task=2)
    assert stream.num_classes == 2
    x_all, y_all = _normalised_source(stream)
    seen: set[int] = set()
    for task in stream:
        assert len(task.classes) == 2 and not seen & set(task.classes)
        seen |= set(task.classes)
        keep = torch.isin(y_all, torch.tensor(task.classes))
        x, y = task.train_data()
        assert torch.equal(x, x_all[keep])
        expected = torch.tensor([task.classes.index(int(c)) for c in y_all[keep]])
        assert torch.equal(y, expected)
        assert set(y.tolist()) == {0, 1}
        _, y_test = task.test_data()
        assert set(y_test.tolist()) == {0, 1}
    assert seen == set(range(10))


def test_split_labels_keep_leaves_source_labels():
    stream = build_stream("split", "digits", num_tasks=3, seed=0, classes_per_task=3, split_labels="keep")
    assert stream.num_classes == 10
    _, y_all = _normalised_source(stream)
    classes = [set(task.classes) for task in stream]
    assert all(len(c) == 3 for c in classes) and len(set().union(*classes)) == 9
    for task in stream:
        assert task.num_classes == 10
        _, y = task.train_data()
        assert set(y.tolist()) == set(task.classes)
        assert torch.equal(y, y_all[torch.isin(y_all, torch.tensor(task.classes))])


@pytest.mark.parametrize(("num_tasks", "classes_per_task"), [(6, 2), (4, 3), (1, 11)])
def test_split_with_too_many_classes_is_a_value_error(num_tasks, classes_per_task):
    with pytest.raises(ValueError, match="exceeds"):
        build_stream("split", "digits", num_tasks=num_tasks, seed=0, classes_per_task=classes_per_task)


# ---------------------------------------------------------------------------------------------
# The digits source's split


def test_digits_split_is_fixed_across_seeds_and_kinds():
    a = build_stream("permuted", "digits", num_tasks=1, seed=0).source
    b = build_stream("rotated", "digits", num_tasks=1, seed=12345).source
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_digits_split_is_a_stratified_partition_60_20_20():
    from sklearn.datasets import load_digits

    src = build_stream("permuted", "digits", num_tasks=1, seed=3).source
    data = load_digits()
    n_class = np.bincount(data.target, minlength=10)
    for split, share in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        n = torch.bincount(src.split(split)[1], minlength=10).numpy()
        assert np.all(np.abs(n - share * n_class) <= 1.5), (split, n, n_class)

    def samples(x: torch.Tensor, y: torch.Tensor) -> Counter:
        pixels = (x * 16).round().to(torch.int64).flatten(1)  # images are k/16, so exact
        return Counter((tuple(p.tolist()), int(c)) for p, c in zip(pixels, y))

    train, val, test = (samples(*src.split(split)) for split in ("train", "val", "test"))
    full = Counter((tuple(p.astype(int).flatten().tolist()), int(c)) for p, c in zip(data.images, data.target))
    # every sample lands in exactly one split (duplicates in the data set counted with multiplicity)
    assert train + val + test == full
    assert len(src.y_train) + len(src.y_val) + len(src.y_test) == len(data.target)
    assert float(src.x_train.min()) >= 0.0 and float(src.x_train.max()) <= 1.0


def test_normalisation_comes_from_the_training_split_alone():
    stream = build_stream("permuted", "digits", num_tasks=1, seed=0)
    assert stream.mean == pytest.approx(float(stream.source.x_train.mean()))
    everything = torch.cat([stream.source.x_train, stream.source.x_val, stream.source.x_test])
    assert stream.mean != pytest.approx(float(everything.mean()), abs=1e-6)


@pytest.mark.parametrize("kind", list(STREAMS))
def test_a_shuffled_order_learns_the_same_tasks_in_a_seeded_order(kind):
    sequential = build_stream(kind, "digits", num_tasks=5, seed=4)
    shuffled = build_stream(kind, "digits", num_tasks=5, seed=4, task_order="shuffled")
    again = build_stream(kind, "digits", num_tasks=5, seed=4, task_order="shuffled")
    other = build_stream(kind, "digits", num_tasks=5, seed=5, task_order="shuffled")
    names = [t.name for t in shuffled]
    assert sorted(names) == sorted(t.name for t in sequential) and names != [t.name for t in sequential]
    assert names == [t.name for t in again] and names != [t.name for t in other]
    assert [t.index for t in shuffled] == list(range(5))  # a task's index is its place in the order
    assert shuffled.identity()["task_order"] == "shuffled" and shuffled.identity()["task_names"] == names
    by_name = {t.name: t for t in sequential}
    for task in shuffled:  # each task's data is the same task's, wherever it sits in the order
        for split in ("train", "test"):
            assert torch.equal(task.data(split)[0], by_name[task.name].data(split)[0])
    assert names == [sequential[k].name for k in learning_order(5, "shuffled", 4)]  # what reports rebuild
    with pytest.raises(KeyError, match="unknown task order 'random'"):
        build_stream(kind, "digits", num_tasks=5, seed=4, task_order="random")


# ---------------------------------------------------------------------------------------------
# Mini-batches


def test_batches_cover_every_index_once_per_epoch():
    n, batch_size = 103, 10
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1) * 2.0  # (N, 1): row i holds 2i
    y = torch.arange(n)
    g = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        got = list(batches(x, y, batch_size, g))
        assert [len(yb) for _, yb in got] == [10] * 10 + [3]
        for xb, yb in got:
            assert torch.equal(xb[:, 0], yb.float() * 2.0)  # rows stay with their labels
        order = torch.cat([yb for _, yb in got])
        assert torch.equal(order.sort().values, y)
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])  # each epoch draws a fresh shuffle


def test_batches_are_deterministic_for_a_seeded_generator():
    x, y = torch.randn(50, 3), torch.arange(50)

    def order(seed: int) -> torch.Tensor:
        return torch.cat([yb for _, yb in batches(x, y, 8, torch.Generator().manual_seed(seed))])

    assert torch.equal(order(5), order(5))
    assert not torch.equal(order(5), order(6))


# ---------------------------------------------------------------------------------------------
# torchvision sources


@pytest.mark.parametrize("source", TORCHVISION_SOURCES)
def test_missing_torchvision_dataset_names_the_resolved_path(source, tmp_path):
    with pytest.raises(DatasetMissingError) as info:
        build_stream("permuted", source, num_tasks=2, seed=0, data_root=str(tmp_path))
    assert str(tmp_path.resolve()) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("source", TORCHVISION_SOURCES)
def test_torchvision_source_without_data_root_reads_the_default_folder(source, tmp_path, monkeypatch):
    monkeypatch.setenv("IMPRESS_DATA", str(tmp_path / "data"))
    with pytest.raises(DatasetMissingError) as info:
        build_stream("permuted", source, num_tasks=2, seed=0, data_root=None)
    message = str(info.value)
    assert f"not found under {(tmp_path / 'data').resolve()} (the default data folder: $IMPRESS_DATA" in message
    # MNIST has a command that fetches it without internet access; the others name torchvision's download
    assert ("`impress data mnist`" in message) == (source == "mnist")
    assert ("--download true" in message) == (source != "mnist")


def test_a_relative_default_data_folder_is_refused(monkeypatch):
    # a study's trials run in folders of their own, where a relative path would name another folder
    monkeypatch.setenv("IMPRESS_DATA", "data")
    with pytest.raises(FileNotFoundError, match=r"\$IMPRESS_DATA must be an absolute path, got 'data'"):
        build_stream("permuted", "mnist", num_tasks=2, seed=0, data_root=None)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX ("ubyte") file: big-endian magic 0x00 0x00 0x08 (uint8) ndim, then each dim as uint32."""
    assert array.dtype == np.uint8
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def test_mnist_from_idx_files(tmp_path):
    # torchvision 0.29's MNIST reads <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    # (uncompressed, no checksum); the processed/ folder is only a legacy cache and is not needed.
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", 30), ("t10k", 12)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = (images, labels)

    stream = build_stream("permuted", "mnist", num_tasks=2, seed=0, data_root=str(tmp_path))
    assert stream.in_shape == (1, 28, 28) and stream.num_classes == 10
    train_images = written["train"][0][:25].astype(np.float64) / 255.0  # normalised on train alone
    assert stream.mean == pytest.approx(train_images.mean(), rel=1e-5)
    assert stream.std == pytest.approx(train_images.std(ddof=1), rel=1e-5)

    for task in stream:
        order = _pixel_order(task, stream.in_shape)
        # validation is the last sixth of the training images, in their order (MNIST: 10,000 of 60,000)
        parts = {"train": ("train", slice(0, 25)), "val": ("train", slice(25, 30)), "test": ("t10k", slice(None))}
        for split, (prefix, rows) in parts.items():
            x, y = task.data(split)
            images, labels = (a[rows] for a in written[prefix])
            assert x.shape == (len(images), 1, 28, 28)
            assert torch.equal(y, torch.from_numpy(labels).long())
            expected = (torch.from_numpy(images).float().unsqueeze(1) / 255.0 - stream.mean) / stream.std
            torch.testing.assert_close(x.flatten(1), expected.flatten(1)[:, order])
            torch.testing.assert_close(x.flatten(1).sort(dim=1).values, expected.flatten(1).sort(dim=1).values)
