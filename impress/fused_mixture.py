"""The masked weight of a coefficient step, `weight * sum_i alpha[row, i] * mask_i`, fused on CPU.

ImpressLearn trains only the coefficients alpha (R, m) that mix the first m stored binary masks;
row r covers a contiguous block of output units (`impress.layers.unit_blocks`), hence a contiguous
range of the flat weight. Each weight's bits in the bank are read as words (`bank_words`: 32 masks
per uint32, word-major). One loop each way, both lookups in tables of partial sums (the method of
four Russians):

    forward   out[w] = weight[w] * sum_i alpha[row(w), i] * bit_i(w)
    backward  dalpha[r, i] = sum over row r's weights w of grad[w] * weight[w] * bit_i(w)

Weights are frozen, so no weight gradient is made. Masks past m weigh 0; a signed-constant weight
is read as int8 signs and its constant, as in `impress.fused_topk`. Two implementations:

Native (`mixture_avx512.c`: C with AVX-512 and GFNI, built by the system C compiler on first use,
~0.7 s, into the user's cache; `native_loops`). Tables of 4 bits, 16 floats: one zmm register,
looked up 16 lanes at a time by VPERMPS. Forward: per row a table per 4 masks, indexed by each
weight's 4 bits of them. Backward, with the roles swapped: per 32 weights a table per 4 weights of
their grad * weight, indexed by each mask's 4 bits of them (a word's 32x32 bit block is transposed
in registers: byte permutes and GF2P8AFFINEQB). Either way a shift, a permute and an add per 64
(mask, weight) pairs; float32 sums, equal to the explicit float sum up to summation order.

numba (the fallback where the native loops cannot be built or run, and within `numba_loops`).
Tables of 8 bits per row, 256 entries: the forward looks up ceil(m/8) per weight; the backward
adds grad * weight into a histogram per byte of masks, then folds each onto its 8 masks. The
forward's tables hold integers: each alpha rounded to a unit of sum|alpha_row| / 2^52 and summed
in int64, exactly and on the integer ports; its error, below 2^-52 of sum|alpha_row|, is smaller
than the float32 sum's. The loops walk a block of weights word by word, so a block's sums stay in
L1 while the words stream by.

NOTE: measured per 1.86M weights (FC-1024-1024's three layers), 1 thread, the minimum of 21 runs
beside other work on this 2-core VM, forward / backward: native 0.8 / 1.0 ms at m = 8, 1.0 / 1.3 ms
at m = 32 and 3.2 / 3.6 ms at m = 128 (per-unit rows: 3.6 / 3.9 ms); numba 1.2 / 1.4, 2.3 / 3.1
and 8.1 / 11.8 ms (per-unit rows: 11.3 / 14.5 ms) in the same runs. The native forward is bound by
its two vector ports, 1.5 cycles per 4 masks and 16 weights (software prefetching did not help);
the backward adds, whatever m, 8 tables of 4 masked adds per 32 weights. Measured and dropped,
native, m = 128: a masked add per mask and 16 weights with the bank's 16 bits loaded as its mask
(7.1 / 8.6 ms: mask registers loaded at one per cycle); numba's int64 fixed point in zmm (14-19 ms:
8 lanes); a second, mask-major copy of the bank for the backward instead of the transposes (12%
slower at m = 128, 2x at m = 32, and another bank of memory); backward tiles of 32 blocks of
weights instead of 4 (5-15% slower); forward steps of 2 zmm instead of 4 (11-15% slower; 8 alike).
numba, m = 128: float tables in the forward (9.8 ms); all of a weight's words in one loop (11.2 /
15.2 ms); two histograms per table against store-to-load stalls (16.4 ms); int64 histograms (16%
slower); the backward transposed, per 8 weights a table of their 256 gradient sums (building the
tables alone took 11.8 ms). A row of a few weights (a 3x3 conv over 3 channels: 27) pays mostly for
its tables, but such layers hold few weights.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy
import torch
from llvmlite import binding

from impress.fused_topk import _compiled, _weight_data
from impress.masks import unpack_bits

__all__ = ["bank_words", "fused_applies", "mixture_masked_weight", "native_loops", "numba_loops"]

_WORD = 32  # masks per word of `bank_words`
_BLOCK = 1024  # weights per block of the loops
_FIXED = 2.0**52  # the forward's table unit is sum|alpha_row| / _FIXED (see `_fill_tables`)


def bank_words(bank: torch.Tensor, numel: int) -> torch.Tensor:
    """Each weight's bits in the packed bank (n_masks, ceil(numel / 8)) as (ceil(n_masks / 32), numel)
    int32 words (read as uint32): mask 32k + j is bit j of word k. Word-major, so a mixture of the
    first m masks reads only ceil(m / 32) words per weight whatever the bank holds."""
    words = torch.zeros(-(-len(bank) // _WORD), numel, dtype=torch.int32)
    for i in range(len(bank)):  # one mask at a time: never all unpacked at once
        words[i // _WORD] |= unpack_bits(bank[i], (numel,)).int() << (i % _WORD)
    return words


# ---------------------------------------------------------------------------------------------
# Native loops: C with AVX-512, built on first use

_SOURCE = Path(__file__).with_name("mixture_avx512.c")
_FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vbmi", "-mgfni", "-shared", "-fPIC")
_CPU = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vbmi", "gfni")  # as LLVM names the host's features
# (words, numel, m, bounds, rows, alpha or grad, w, w is int8, scale, out or dalpha)
_ARGS = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p]
_ARGS += [ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_void_p]


def _cache_folder() -> Path | None:
    """`$XDG_CACHE_HOME/impress/kernels` (by default `~/.cache/impress/kernels`), if it can be written."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    try:
        folder = (Path(cache) if Path(cache).is_absolute() else Path.home() / ".cache") / "impress" / "kernels"
        if not folder.is_absolute():  # no home directory known: `~` left as it is
            return None
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError):  # RuntimeError: no home directory (Python 3.12+)
        return None
    return folder if os.access(folder, os.W_OK) else None


def _build(compiler: str, folder: Path) -> Path:
    """The shared library of `_SOURCE` compiled by `compiler` (a path) in `folder`, once per source,
    compiler and flags. Concurrent processes may both compile; each renames its own file into place,
    so none loads a half-written one."""
    stat = os.stat(compiler)
    key = hashlib.sha256(_SOURCE.read_bytes())
    key.update(repr((compiler, stat.st_size, stat.st_mtime_ns, _FLAGS)).encode())
    library = folder / f"mixture_avx512-{key.hexdigest()[:16]}.so"
    if not library.exists():
        fd, partial = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(fd)
        try:
            subprocess.run([compiler, *_FLAGS, "-o", partial, str(_SOURCE)], check=True, capture_output=True, text=True)
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    return library


def _cpu_has_the_instructions() -> bool:
    """Whether this CPU, and its OS, run the native loops' instructions (as LLVM reads the host)."""
    try:
        features = binding.get_host_cpu_features()
    except RuntimeError:  # LLVM knows no features of this host
        return False
    return all(features.get(name, False) for name in _CPU)


def _load(compiler: str) -> ctypes.CDLL | None:
    """The native loops built by `compiler` (a name on PATH or a path) into the user's cache, or where
    that cannot be written into a temporary folder (~0.7 s per process); or None where they cannot
    run: a CPU without the instructions (silently), no such compiler or a failed build (a warning)."""
    if not _cpu_has_the_instructions():
        return None
    found = shutil.which(compiler)
    try:
        if found is None:
            raise FileNotFoundError(f"no C compiler {compiler!r} (set $CC)")
        compiler, folder = os.path.realpath(found), _cache_folder()
        if folder is not None:
            library = ctypes.CDLL(str(_build(compiler, folder)))
        else:  # built anew in each process, in a folder gone once the library is loaded
            with tempfile.TemporaryDirectory(prefix="impress-kernels-", ignore_cleanup_errors=True) as temporary:
                library = ctypes.CDLL(str(_build(compiler, Path(temporary))))
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.strip().splitlines()[-1:] if isinstance(e, subprocess.CalledProcessError) else [str(e)]
        warnings.warn(
            f"impress.fused_mixture: the native loops are not available ({'; '.join(detail) or e}); "
            "coefficient steps run the numba loops instead (about 2x slower at m = 128)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    for name in ("mixture_forward", "mixture_backward"):
        getattr(library, name).argtypes, getattr(library, name).restype = _ARGS, ctypes.c_int
    return library


def _native_weight(read: tuple) -> tuple[int, bool, float]:
    """The native loops' view of `_weight_data`'s (w, scale): w's address, whether it is int8 signs, scale."""
    w, scale = read
    return w.ctypes.data, w.dtype == numpy.int8, float(scale)


def _done(status: int) -> None:
    if status != 0:  # the native loops' only failure: no memory for their tables
        raise MemoryError("impress.fused_mixture: the native loops could not allocate their tables")


@functools.cache
def native_loops() -> ctypes.CDLL | None:
    """The native loops (`mixture_forward`, `mixture_backward`), built with `$CC` (default `cc`) on first
    use, or None: then the numba loops run. Decided once per process."""
    return _load(os.environ.get("CC") or "cc")


_NUMBA = contextvars.ContextVar("impress_mixture_numba", default=False)


@contextlib.contextmanager
def numba_loops() -> Iterator[None]:
    """Within the block, coefficient steps run the numba loops even where the native ones run (to
    compare the two, and to test the fallback)."""
    token = _NUMBA.set(True)
    try:
        yield
    finally:
        _NUMBA.reset(token)


# ---------------------------------------------------------------------------------------------
# numba loops: the fallback


@_compiled
def _fill_tables(alpha, tables):  # pragma: no cover - compiled
    """tables[g][b] = sum of alpha[8g + j] over the bits j set in b, in int64 units of
    sum|alpha| / 2^52 (each alpha rounded to a unit); returns the unit. alpha (8G,), tables (G, 256)."""
    total = 0.0
    for j in range(alpha.size):
        total += abs(numpy.float64(alpha[j]))
    unit = total / _FIXED if total > 0.0 else 1.0
    for g in range(tables.shape[0]):
        t = tables[g]
        t[0] = 0
        for j in range(8):
            a = numpy.int64(numpy.round(alpha[8 * g + j] / unit))
            half = 1 << j
            for b in range(half):  # the entries whose top bit is j: those below, plus alpha_j
                t[half + b] = t[b] + a
    return unit


@numba.njit(inline="always")
def _lookup(t0, t1, t2, t3, x, one):  # pragma: no cover - compiled
    """The tables' entries for the four bytes of word x (only its lowest if `one`)."""
    if one:
        return t0[x & 255]
    return (t0[x & 255] + t1[(x >> 8) & 255]) + (t2[(x >> 16) & 255] + t3[x >> 24])


@_compiled
def _forward(words, groups, bounds, alpha, w, scale, out):  # pragma: no cover - compiled
    """out[i] = scale * w[i] * sum_g tables_row(i)[g][byte g of i's bits]; alpha (R, 8 * groups),
    row r covering bounds[r]:bounds[r + 1]."""
    n_words = -(-groups // 4)
    tables = numpy.zeros((4 * n_words, 256), numpy.int64)  # bytes past the last group look up zeros
    acc = numpy.empty(_BLOCK, numpy.int64)
    for r in range(bounds.size - 1):
        unit = _fill_tables(alpha[r], tables[:groups])
        for start in range(bounds[r], bounds[r + 1], _BLOCK):
            n = min(_BLOCK, bounds[r + 1] - start)
            for k in range(n_words):
                x_ = words[k, start : start + n]
                t0, t1, t2, t3 = tables[4 * k], tables[4 * k + 1], tables[4 * k + 2], tables[4 * k + 3]
                one = groups - 4 * k == 1  # a word holding one group (m = 8 of 128: one lookup, not four)
                if k == 0:
                    for i in range(n):
                        acc[i] = _lookup(t0, t1, t2, t3, x_[i], one)
                else:
                    for i in range(n):
                        acc[i] += _lookup(t0, t1, t2, t3, x_[i], one)
            w_, out_ = w[start : start + n], out[start : start + n]
            for i in range(n):
                out_[i] = (scale * unit) * w_[i] * acc[i]


@numba.njit(inline="always")
def _scatter(h0, h1, h2, h3, x, v, one):  # pragma: no cover - compiled
    """Add v to the histograms' bins of the four bytes of word x (only its lowest if `one`)."""
    h0[x & 255] += v
    if not one:
        h1[(x >> 8) & 255] += v
        h2[(x >> 16) & 255] += v
        h3[x >> 24] += v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc"})
def _fold(hist, scale, out):  # pragma: no cover - compiled
    """out[j] += scale * (sum of hist[b] over the b with bit j set); consumes hist (256,). The upper
    half of the bins has the top bit and folds onto the lower half: 510 adds, reassociated."""
    for j in range(7, -1, -1):
        half = 1 << j
        s = numpy.float32(0.0)
        for b in range(half):
            v = hist[half + b]
            s += v
            hist[b] += v
        out[j] += scale * s


@_compiled
def _backward(words, groups, bounds, grad, w, scale, dalpha):  # pragma: no cover - compiled
    """dalpha[r, 8g + j] += scale * (sum of grad[i] * w[i] over row r's weights i with mask 8g + j)."""
    n_words = -(-groups // 4)
    hist = numpy.empty((4 * n_words, 256), numpy.float32)
    gw = numpy.empty(_BLOCK, numpy.float32)
    for r in range(bounds.size - 1):
        hist[:] = 0.0
        for start in range(bounds[r], bounds[r + 1], _BLOCK):
            n = min(_BLOCK, bounds[r + 1] - start)
            grad_, w_ = grad[start : start + n], w[start : start + n]
            for i in range(n):
                gw[i] = grad_[i] * w_[i]
            for k in range(n_words):
                x_ = words[k, start : start + n]
                h0, h1, h2, h3 = hist[4 * k], hist[4 * k + 1], hist[4 * k + 2], hist[4 * k + 3]
                one = groups - 4 * k == 1
                for i in range(n):
                    _scatter(h0, h1, h2, h3, x_[i], gw[i], one)
        for g in range(groups):
            _fold(hist[g], scale, dalpha[r, 8 * g : 8 * g + 8])


class _MixtureMaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: torch.Tensor, weight: torch.Tensor, words: torch.Tensor, bounds, read: tuple):
        (rows, m), (w, scale) = alpha.shape, read
        out = torch.empty(weight.shape, dtype=torch.float32)
        native, words = None if _NUMBA.get() else native_loops(), words.contiguous()  # (K, numel): no copy
        ctx.native, ctx.words, ctx.bounds, ctx.read, ctx.m = native, words, bounds, read, m
        if ctx.native is not None:  # reads words, bounds, alpha (R, m) and w in place
            a = alpha.detach().contiguous()
            args = words.data_ptr(), words.shape[1], m, bounds.ctypes.data, rows, a.data_ptr(), *_native_weight(read)
            _done(ctx.native.mixture_forward(*args, out.data_ptr()))
            return out
        groups = -(-m // 8)
        padded = alpha.detach().new_zeros(rows, 8 * groups)
        padded[:, :m] = alpha.detach()  # masks past m weigh 0
        codes = words[: -(-m // _WORD)].numpy().view(numpy.uint32)  # (ceil(m / 32), numel)
        _forward(codes, groups, bounds, padded.numpy(), w, scale, out.view(-1).numpy())
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, m, (w, scale), grad = len(ctx.bounds) - 1, ctx.m, ctx.read, grad.contiguous()
        if ctx.native is not None:
            dalpha = torch.zeros(rows, m, dtype=torch.float32)
            args = ctx.words.data_ptr(), ctx.words.shape[1], m, ctx.bounds.ctypes.data, rows, grad.data_ptr()
            _done(ctx.native.mixture_backward(*args, *_native_weight(ctx.read), dalpha.data_ptr()))
            return dalpha, None, None, None, None
        groups = -(-m // 8)
        dalpha = torch.zeros(rows, 8 * groups, dtype=torch.float32)
        codes = ctx.words[: -(-m // _WORD)].numpy().view(numpy.uint32)
        _backward(codes, groups, ctx.bounds, grad.view(-1).numpy(), w, scale, dalpha.numpy())
        return dalpha[:, :m], None, None, None, None


def fused_applies(alpha: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `mixture_masked_weight` applies: finite CPU float32 coefficients (the forward's tables
    are fixed-point) and a frozen CPU float32 weight (a trained one needs its own gradient, which
    only the torch path gives)."""
    return (
        alpha.device.type == "cpu"
        and weight.device.type == "cpu"
        and alpha.dtype == torch.float32
        and weight.dtype == torch.float32
        and not weight.requires_grad
        and bool(torch.isfinite(alpha).all())
    )


def mixture_masked_weight(
    alpha: torch.Tensor, weight: torch.Tensor, words: torch.Tensor, bounds: numpy.ndarray
) -> torch.Tensor:
    """`weight * sum_i alpha[r, i] * mask_i` with r the row of each weight, value and gradient w.r.t.
    alpha (R, m): row r covers the flat weights bounds[r]:bounds[r + 1] (int64, R + 1 of them);
    `words` is `bank_words(bank, weight.numel())`."""
    return _MixtureMaskedWeight.apply(alpha, weight, words, bounds, _weight_data(weight))
