"""Does storing coefficients at 16 or 8 bits cost accuracy, and so is quantisation-aware training needed?

    .venv/bin/python analysis/precision.py [--seeds 0 1 2] [--stream rotated] [--out DIR]

Training is the same at every `alpha_bits` (it always yields float32 coefficients; the precision
only decides what is stored), so one run per config and seed suffices: each coefficient-learned
task is evaluated on test with its float32 coefficients and with them stored at 16 and at 8 bits
(`impress.precision.round_trip`), on the same model. The difference float32 minus stored bounds
what quantisation-aware training could win back: it cannot beat the float32 coefficients it
approximates. Prints a Markdown table (mean ± sample std over seeds, n) and writes it with its
provenance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from impress.config import Config
from impress.layers import task_view
from impress.precision import round_trip
from impress.provenance import provenance
from impress.trainer import build, evaluate, resolve_device

CONFIGS = [
    ("global", dict(granularity="global")),
    ("layer", dict(granularity="layer")),
    ("group G=16", dict(granularity="group", groups=16)),
    ("channel", dict(granularity="channel")),
]
BITS = (16, 8)


def measure(cfg: Config) -> dict[int, float]:
    """Mean test accuracy over the coefficient-learned tasks, per stored precision (32: as trained)."""
    stream, method = build(cfg, resolve_device(cfg.device))
    for task in stream:
        method.learn(task, lambda event: None)
    coeff_tasks = [task for task in stream if task.index >= method.n_dedicated]
    out = {}
    for bits in (32, *BITS):
        stored = round_trip(method.coeffs, cfg.m, bits)
        accs = []
        for task in coeff_tasks:
            row = stored[task.index - method.n_dedicated]
            view = task_view(method.net, method.layout.sources(row), bn_task=task.index)
            accs.append(evaluate(method, task, split="test", view=view))
        out[bits] = float(np.mean(accs))
    return out


def _fmt(a: np.ndarray, digits: int = 3) -> str:
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stream", default="rotated")
    parser.add_argument("--m", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "precision")
    args = parser.parse_args()
    base = Config(stream=args.stream, num_tasks=10, method="impresslearn", epochs=8, threads=1)
    lines = [
        "| config | float32 | 16-bit | 8-bit | 32 - 8 (points) | n |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in args.m:
        for name, changes in CONFIGS:
            runs = [measure(base.replace(m=m, seed=s, **changes)) for s in args.seeds]
            acc = {b: np.array([r[b] for r in runs]) for b in (32, *BITS)}
            drop = 100 * (acc[32] - acc[8])
            lines.append(
                f"| m = {m}, {name} | {_fmt(acc[32])} | {_fmt(acc[16])} | {_fmt(acc[8])} | "
                f"{_fmt(drop, 2)} | {len(args.seeds)} |"
            )
            print(lines[-1], flush=True)
    prov = provenance()
    head = (
        f"Test accuracy of the coefficient-learned tasks of 10-task {args.stream} digits (heterogeneous "
        f"impressions, 64-256-256 MLP, 8 epochs), the same trained coefficients evaluated as float32 and as "
        f"stored at 16 and 8 bits; mean ± sample std over seeds {args.seeds}."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([head, "", *lines, "", f"Commit {prov['git_commit']}, torch {prov['versions']['torch']}."])
    (args.out / f"precision_{args.stream}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
