"""Every task-identity inference rule on permuted and rotated digits, full batch and single image,
as mean and spread over seeds (the rules: README, "Task-identity inference").

    .venv/bin/python analysis/inference_comparison.py [--widths 64 64] [--seeds 0 1 2] [--out DIR]

(about 15 min on 2 busy CPU cores with one thread). Each (stream, method, seed) learns a 10-task
stream once (an MLP, default 64-256-256, density 0.5, plus `superfluous` extra outputs for SupSup's
G objective), then every rule infers each task's test set: in batches of 128, and image by image
(the first `--single-images` test images of each task).
Prints a Markdown table; writes each run's metrics (JSON), a CSV, provenance and this script.
Every number is measured on the test split (the keys carry no `test/` prefix); nothing here is
chosen, so validation metrics play no part.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from impress.config import INFERENCE_RULES, Config
from impress.inference import evaluate_inference
from impress.provenance import provenance
from impress.trainer import build, evaluate, resolve_device

BASE = Config(num_tasks=10, m=5, superfluous=20, infer_rules=INFERENCE_RULES, infer_single=True)
METHODS: list[tuple[str, dict]] = [
    ("SupSup", dict(method="supsup")),
    ("ImpressLearn het. layer", dict(granularity="layer")),
    ("ImpressLearn het. channel", dict(granularity="channel")),
]
COLUMNS = [  # (header, metric key without the rule)
    ("task id, batch", "task_infer/acc"),
    ("task id, single", "task_infer/acc_single"),
    ("GNu, batch", "acc/gnu"),
    ("GNu, single", "acc/gnu_single"),
    ("GNs, batch", "acc/gns"),
    ("GNs, single", "acc/gns_single"),
    ("ms / batch", "time/infer_batch_ms"),
]


def _fmt(values: list[float], digits: int = 3) -> str:
    a = np.array(values, dtype=float)
    spread = np.std(a, ddof=1) if len(a) > 1 else 0.0
    return f"{a.mean():.{digits}f} ± {spread:.{digits}f}"


def _learn(cfg: Config, single_images: int) -> tuple[dict[str, float], float, float]:
    """Inference metrics of every rule, GG accuracy (all tasks, and coefficient tasks only), for one run.
    ImpressLearn also with its rows as stored (`infer_gain=raw`): keys `<metric>/<rule>~raw`."""
    stream, method = build(cfg, resolve_device(cfg.device))
    began = time.perf_counter()
    for task in stream:
        method.learn(task, lambda event: None)
    print(f"  learned in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    gg = [evaluate(method, task, split="test") for task in stream]
    dedicated = method.dedicated_tasks(cfg, len(stream))
    coeff = float(np.mean(gg[dedicated:])) if dedicated < len(stream) else float("nan")
    metrics = evaluate_inference(method, stream, cfg, single_images=single_images, split="test")
    if cfg.method == "impresslearn":  # full batches only
        raw = evaluate_inference(method, stream, cfg.replace(infer_gain="raw", infer_single=False), split="test")
        metrics |= {f"{k}~raw": v for k, v in raw.items() if k.count("/") == 2}
    return metrics, float(np.mean(gg)), coeff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--streams", nargs="+", default=["permuted", "rotated"])
    parser.add_argument("--single-images", type=int, default=30, help="test images per task inferred alone")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--num-tasks", type=int, default=BASE.num_tasks)
    parser.add_argument("--m", type=int, default=BASE.m, help="ImpressLearn impressions")
    parser.add_argument("--widths", type=int, nargs="+", default=list(BASE.widths), help="hidden widths of the MLP")
    parser.add_argument("--out", default="runs/inference_comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(args.seeds)
    lines = [
        f"n = {n} seeds ({', '.join(map(str, args.seeds))}); mean ± sample std over seeds; {args.num_tasks} tasks "
        f"(chance {1 / args.num_tasks:.2f}); {'-'.join(map(str, [64, *args.widths]))}-(10+{BASE.superfluous}) MLP, "
        f"density 0.5; batch = "
        f"{BASE.infer_batch_size} test images; single = the first {args.single_images} test images of each task; "
        f"ImpressLearn: m = {args.m} heterogeneous impressions",
        "",
        "| stream | method (GG acc: all / coefficient tasks) | rule | " + " | ".join(h for h, _ in COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    csv = ["stream,method,seed,rule,metric,value"]
    for stream in args.streams:
        for label, changes in METHODS:
            runs, gg, coeff = [], [], []
            for seed in args.seeds:
                cfg = BASE.replace(
                    stream=stream, seed=seed, num_tasks=args.num_tasks, m=args.m, widths=args.widths, **changes
                )
                began = time.perf_counter()
                metrics, acc, acc_coeff = _learn(cfg, args.single_images)
                runs.append(metrics), gg.append(acc), coeff.append(acc_coeff)
                name = cfg.run_name()  # names the stream whenever it is not the default
                (out / f"{name}.json").write_text(json.dumps({"config": cfg.to_dict(), "gg": acc, **metrics}, indent=2))
                csv += [f"{stream},{label},{seed},,gg,{acc}"]
                csv += [
                    f"{stream},{label},{seed},{k.rsplit('/', 1)[1]},{k.rsplit('/', 1)[0]},{v}"
                    for k, v in metrics.items()
                    if k.count("/") == 2
                ]
                print(
                    f"{stream} {label} seed={seed}: GG {acc:.3f}, {time.perf_counter() - began:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
            coeff_text = "n/a" if np.isnan(coeff).all() else f"{np.mean(coeff):.2f}"
            variants = [(r, r) for r in INFERENCE_RULES]
            if changes.get("method", BASE.method) == "impresslearn":
                variants += [(f"{r}~raw", f"{r}, raw gain") for r in INFERENCE_RULES]
            for rule, text in variants:
                cells = [
                    _fmt([r[f"{key}/{rule}"] for r in runs], 1 if key.startswith("time") else 3)
                    if f"{key}/{rule}" in runs[0]
                    else "-"
                    for _, key in COLUMNS
                ]
                lines.append(
                    f"| {stream} | {label} ({np.mean(gg):.2f} / {coeff_text}) | {text} | " + " | ".join(cells) + " |"
                )
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "runs.csv").write_text("\n".join(csv) + "\n")
    (out / "provenance.json").write_text(json.dumps(provenance(), indent=2))
    shutil.copy(__file__, out / Path(__file__).name)  # the script that made these numbers
    return 0


if __name__ == "__main__":
    sys.exit(main())
