"""The core library's claims on 20-task digits streams, as mean and spread over seeds.

    .venv/bin/python analysis/core_claims.py [--seeds 0 1 2] [--out runs/core_claims]

Prints a Markdown table (the README's) and writes every run's results and a CSV of the table.
Every number is measured on the test split (`test/...`); nothing here is chosen, so validation
metrics play no part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from impress.config import Config
from impress.provenance import provenance
from impress.trainer import build, resolve_device, run, stored_mask_transfer

BASE = Config(num_tasks=20)
ROWS: list[tuple[str, dict]] = [
    ("SupSup", dict(method="supsup")),
    ("Finetune (dense, lr 1e-3)", dict(method="finetune", lr=0.001)),
    *[
        (f"ImpressLearn het. m={m} {g}", dict(m=m, granularity=g))
        for m in (2, 5, 10)
        for g in ("global", "layer", "channel")
    ],
    ("ImpressLearn hom. m=10 layer", dict(m=10, impressions="homogeneous")),
    ("ImpressLearn rand. m=10 layer", dict(m=10, impressions="random")),
]


def _fmt(values: list[float]) -> str:
    a = np.array(values, dtype=float)
    if np.isnan(a).all():
        return "n/a"
    return f"{np.nanmean(a):.3f} ± {np.nanstd(a, ddof=1) if len(a) > 1 else 0.0:.3f}"


def _transfer(stream_kind: str, seed: int) -> tuple[float, float]:
    """Mean accuracy of one foreign SupSup mask on another task, and on the next task only."""
    cfg = Config(stream=stream_kind, method="supsup", num_tasks=10, seed=seed)
    stream, method = build(cfg, resolve_device(cfg.device))
    for task in stream:
        method.learn(task, lambda event: None)
    A = stored_mask_transfer(method, stream, split="test")
    return float(A[~np.eye(len(A), dtype=bool)].mean()), float(np.mean([A[i, i + 1] for i in range(len(A) - 1)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--streams", nargs="+", default=["rotated", "permuted"])
    parser.add_argument("--out", default="runs/core_claims")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(args.seeds)
    lines = [
        f"n = {n} seeds ({', '.join(map(str, args.seeds))}); mean ± sample std; 64-256-256-10 MLP, "
        f"density 0.5, 20 tasks",
        "",
        "| stream | method | test/acc/avg (all tasks) | test/acc/avg_coeff_tasks | test/forgetting | bits per task "
        "| s per run |",
        "|---|---|---|---|---|---|---|",
    ]
    csv = ["stream,method,seed,acc_avg,acc_avg_coeff_tasks,forgetting,per_task_bits,seconds"]
    for stream in args.streams:
        for label, changes in ROWS:
            accs, coeff, forget, secs, bits = [], [], [], [], None
            for seed in args.seeds:
                cfg = BASE.replace(stream=stream, seed=seed, **changes)
                began = time.perf_counter()
                result = run(cfg)
                secs.append(time.perf_counter() - began)
                name = cfg.run_name()  # names the stream only when it is not the default
                result.write(out / (name if name.startswith("stream=") else f"stream={stream}~{name}"))
                accs.append(result.metrics["test/acc/avg"])
                coeff.append(result.metrics["test/acc/avg_coeff_tasks"])
                forget.append(result.metrics["test/forgetting"])
                bits = result.overhead["per_task_bits"]
                csv.append(f"{stream},{label},{seed},{accs[-1]},{coeff[-1]},{forget[-1]},{bits},{secs[-1]:.2f}")
                print(f"{stream} {label} seed={seed}: {accs[-1]:.3f}", file=sys.stderr, flush=True)
            lines.append(
                f"| {stream} | {label} | {_fmt(accs)} | {_fmt(coeff)} | {_fmt(forget)} | {bits:,} | "
                f"{np.mean(secs):.1f} |"
            )
    lines += [
        "",
        "One stored SupSup mask applied to a task it was not learned on (test split, 10-task streams; chance 0.1):",
        "",
        "| stream | foreign mask, any task | foreign mask, next task |",
        "|---|---|---|",
    ]
    for stream in args.streams:
        pairs = [_transfer(stream, seed) for seed in args.seeds]
        lines.append(f"| {stream} | {_fmt([p[0] for p in pairs])} | {_fmt([p[1] for p in pairs])} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "runs.csv").write_text("\n".join(csv) + "\n")
    (out / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
