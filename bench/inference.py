"""Task-identity inference cost against the number of stored tasks T.

    python -m bench.inference [--quick] [--threads 1] [--repeats 10] [--clock wall|cpu]

One-shot inference of one batch (128 images, entropy objective): one forward and one backward
through the superposition of all T stored tasks, then the argmin of dH/dbeta. On LeNet-300-100
(784-300-100-10, density 0.5, 266,200 masked weights; random masks and coefficients stand in for
learned ones, the cost does not depend on them):

    impresslearn   collapsed: sum_t beta_t sum_i alpha_ti M_i = sum_i (beta @ alpha)_i M_i, a mixture
                   of the m = 10 impressions whatever T is (layer coefficients)
    supsup         SupSup's superposition: a mixture of the T stored masks
    explicit       ImpressLearn without the collapse: the sum over T tasks of each task's mixture

Expected: impresslearn flat in T; supsup and explicit growing with T. Every configuration runs
once per round, alternating, so the machine's load moves them together; medians over the rounds.
`FIGURES`/`run` follow the sections of `python -m bench`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from torch import nn

from bench.report import Figure, ratio_figure
from bench.timing import CLOCKS, side_by_side
from impress.backbones import build_backbone
from impress.config import Config
from impress.inference import entropy, identify, task_basis
from impress.layers import masked_layers, task_view
from impress.methods import ImpressLearn, SupSup
from impress.provenance import provenance
from impress.seeding import generator

__all__ = ["FIGURES", "TASKS", "run", "main"]

TASKS = (10, 100, 1000)
M = 10
KINDS = ("impresslearn", "supsup", "explicit")
FIGURES = tuple(f"infer/{kind}/T={T}" for kind in KINDS for T in TASKS)
IN_SHAPE, BATCH = (1, 28, 28), 128


def _method(kind: str, T: int) -> nn.Module:
    """A method holding T stored tasks: random packed masks (about half kept) and coefficients."""
    cfg = Config(method="supsup" if kind == "supsup" else "impresslearn", backbone="lenet300", m=M, num_tasks=max(T, M))
    net = build_backbone("lenet300", in_shape=IN_SHAPE, num_classes=10, seed=0)
    method = SupSup(cfg, net) if kind == "supsup" else ImpressLearn(cfg, net)
    rows = T if kind == "supsup" else M
    for i, layer in enumerate(masked_layers(net)):
        # NOTE: the bank buffer written at once; T calls of `store_mask` would copy the bank T times
        g = generator("bench_infer_bank", kind, T, i)
        layer.bank = torch.randint(0, 256, (rows, layer.bank.shape[1]), dtype=torch.uint8, generator=g)
    if kind != "supsup":  # tasks M.. learned as coefficients (the first M keep their own masks)
        g = generator("bench_infer_coeffs", T)
        method.coeffs = torch.rand(T - M, method.layout.size, generator=g) * (2.0 / M)
    return method.eval()


def _oneshot(kind: str, T: int, x: torch.Tensor) -> Callable[[], object]:
    method = _method(kind, T)
    cfg = Config(method="supsup" if kind == "supsup" else "impresslearn", m=M, num_tasks=max(T, M))
    basis = task_basis(method, gain="raw")  # one-time work (no rescaling) kept out of the timing
    if kind != "explicit":
        return lambda: identify(basis, method.net, x.unsqueeze(0), "oneshot_h", cfg, classes=10)
    per_task = [basis.sources(basis.coeffs[t]) for t in range(T)]  # (T, layers) mask sources
    n_layers = len(per_task[0])

    def explicit() -> torch.Tensor:
        beta = torch.full((T,), 1.0 / T, requires_grad=True)
        sources = [lambda layer, i=i: sum(beta[t] * per_task[t][i](layer) for t in range(T)) for i in range(n_layers)]
        with torch.enable_grad(), task_view(method.net, sources):
            (g,) = torch.autograd.grad(entropy(method.net(x), 10).mean(), beta)
        return g.argmin()

    return explicit


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    """Each configuration against ImpressLearn (collapsed) at T = 10, alternating round by round."""
    x = torch.randn(BATCH, *IN_SHAPE, generator=generator("bench_infer_x"))
    base = _oneshot("impresslearn", TASKS[0], x)
    steps = {name: _oneshot(name.split("/")[1], int(name.split("=")[1]), x) for name in FIGURES[1:]}
    ratios = side_by_side(base, steps, repeats=repeats, warmup=1 if quick else 2, clock=clock)
    base_ms = next(iter(ratios.values())).base_ms
    figures = [
        Figure(FIGURES[0], "one-shot inference of a batch of 128, ImpressLearn collapsed, T=10 (the baseline)",
               base_ms, "ms", None, None, repeats)
    ]  # fmt: skip
    for name, ratio in ratios.items():
        kind, T = name.split("/")[1], name.split("=")[1]
        flat = ("<=", 1.5) if kind == "impresslearn" else None  # collapsed: T enters as a (T,) x (T, size) product
        what = f"one-shot inference of a batch of 128, {kind}, T={T}, / ImpressLearn collapsed at T=10"
        figures.append(ratio_figure(name, what, ratio, flat, labels=("impresslearn T=10", name)))
    return figures


def _table(figures: list[Figure]) -> str:
    base_ms = figures[0].value  # the baseline in ms, then the others as ratios to it
    ms = {figures[0].name: base_ms} | {f.name: base_ms * f.value for f in figures[1:]}
    lines = [
        "| stored tasks T | ImpressLearn collapsed (ms) | SupSup superposition of T masks (ms) | "
        "ImpressLearn explicit sum over T (ms) |",
        "|---|---|---|---|",
    ]
    for T in TASKS:
        cells = [f"{ms[f'infer/{kind}/T={T}']:.1f}" for kind in KINDS]
        lines.append(f"| {T} | " + " | ".join(cells) + " |")
    growth = ", ".join(
        f"{kind} {ms[f'infer/{kind}/T={TASKS[-1]}'] / ms[f'infer/{kind}/T={TASKS[0]}']:.1f}x" for kind in KINDS
    )
    return "\n".join([*lines, "", f"T={TASKS[-1]} / T={TASKS[0]}: {growth}"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inference", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 rounds")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; quick 3)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 10)
    prov = provenance()
    commit = (prov["git_commit"] or "unknown")[:10] + ("+dirty" if prov["git_dirty"] else "")
    print(
        f"inference cost vs stored tasks: lenet300 (266,200 masked weights), batch {BATCH}, m={M}, one-shot H; "
        f"commit {commit}, torch {prov['versions']['torch']}, threads {args.threads}, clock {args.clock}, "
        f"median of {repeats} alternating rounds",
        flush=True,
    )
    figures = run(repeats=repeats, quick=args.quick, clock=args.clock)
    print(_table(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
