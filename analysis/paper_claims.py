"""The paper's claims, answered from finished MNIST studies: configs chosen on validation, test reported.

    .venv/bin/python analysis/paper_claims.py runs/studies/rotated_mnist_lenet [runs/studies/permuted_mnist_lenet ...]
        [--out analysis/results] [--no-checkpoints]

For each study folder it reads every finished trial's `results/<trial>/results.json` and writes
`<study>_configs.csv` and `<study>_claims.md` (the README's "Paper claims on MNIST" tables): every
config's mean ± sample std over its seeds (n stated) on validation and on test, and the claims' own
rows. Where a claim chooses (the best granularity or order at each m; the cheapest config within 3
points of SupSup), it chooses on validation and shows test beside it.

From the trials' final checkpoints (`checkpoints/`, unless `--no-checkpoints`) it also measures, on
test: each stored SupSup mask applied alone to every other task (is one foreign impression near
chance?), and task identification without task labels (SupSup's one-shot with the entropy H,
against ImpressLearn's collapsed one-shot; `--fit` adds its label-free fit) from batches of 128 test
images.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from impress.checkpoint import load_checkpoint, load_method_state
from impress.config import Config
from impress.inference import evaluate_inference
from impress.provenance import provenance
from impress.trainer import build, resolve_device, stored_mask_transfer
from impress.tuner import checkpoint_folder

METRICS = (
    "val/acc/avg",
    "test/acc/avg",
    "val/acc/avg_coeff_tasks",
    "test/acc/avg_coeff_tasks",
    "test/forgetting",
    "bits/per_task",
)
FIELDS = ("method", "impressions", "m", "granularity", "task_order")
WITHIN = 0.03  # "within 3 points of SupSup"


def _label(row: pd.Series) -> str:
    if row["method"] != "impresslearn":
        return {"supsup": "SupSup"}.get(row["method"], row["method"])
    order = "" if row["task_order"] == "sequential" else ", shuffled"
    short = {"heterogeneous": "het.", "homogeneous": "hom.", "random": "rand."}[row["impressions"]]
    return f"ImpressLearn {short} m={row['m']} {row['granularity']}{order}"


def trials(root: Path) -> pd.DataFrame:
    """One row per finished trial: its config fields, seed and final metrics."""
    rows = []
    for path in sorted((root / "results").glob("*/results.json")):
        result = json.loads(path.read_text())
        config = result["config"]
        rows.append(
            {
                **{k: config[k] for k in FIELDS},
                "seed": config["seed"],
                "trial": path.parent.name,
                **{k: result["metrics"].get(k, np.nan) for k in METRICS if k != "bits/per_task"},
                "bits/per_task": result["overhead"]["per_task_bits"],
                "seconds": sum(result["task_seconds"]),
                "commit": result["provenance"].get("git_commit"),
            }
        )
    if not rows:
        raise SystemExit(f"{root}: no finished trial (results/*/results.json)")
    frame = pd.DataFrame(rows).astype({"m": object})
    frame.loc[frame["method"] != "impresslearn", ["impressions", "m", "granularity"]] = None
    return frame.assign(config=[_label(r) for _, r in frame.iterrows()])


def configs(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, sample std and n over seeds of every metric, one row per config."""
    groups = table.groupby("config", sort=False)
    out = groups[list(METRICS)].mean()
    for m in METRICS:
        out[f"{m}_std"] = groups[m].std(ddof=1)
    out["n"] = groups.size()
    out["seeds"] = groups["seed"].agg(lambda s: ",".join(map(str, sorted(s))))
    out["seconds"] = groups["seconds"].mean()
    for field in FIELDS:
        out[field] = groups[field].first()
    return out.reset_index()


def _spread(values) -> str:
    """mean ± sample std of a list of numbers (std 0 for one)."""
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def _pm(row: pd.Series, metric: str) -> str:
    mean, std = row[metric], row[f"{metric}_std"]
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if pd.notna(std) else f"{mean:.3f}"


def config_table(summary: pd.DataFrame) -> str:
    head = (
        "| config | n | val acc (all) | **test acc (all)** | test acc (coefficient tasks) | test forgetting "
        "| bits per task | vs SupSup's bits |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    supsup = summary.loc[summary["method"] == "supsup", "bits/per_task"]
    ref = float(supsup.iloc[0]) if len(supsup) else np.nan
    for _, r in summary.iterrows():
        share = r["bits/per_task"] / ref if ref == ref else np.nan
        lines.append(
            f"| {r['config']} | {r['n']} | {_pm(r, 'val/acc/avg')} | {_pm(r, 'test/acc/avg')} "
            f"| {_pm(r, 'test/acc/avg_coeff_tasks')} | {_pm(r, 'test/forgetting')} "
            f"| {int(r['bits/per_task']):,} | {share:.4%} |"
        )
    return "\n".join(lines)


def cheapest_near_supsup(summary: pd.DataFrame) -> pd.Series | None:
    """The config with the fewest bits per task whose mean validation accuracy is within 3 points of
    SupSup's (chosen on validation); None without SupSup or without such a config."""
    supsup = summary[summary["method"] == "supsup"]
    if not len(supsup):
        return None
    near = summary[(summary["method"] != "supsup") & (summary["val/acc/avg"] >= supsup["val/acc/avg"].iloc[0] - WITHIN)]
    return near.sort_values(["bits/per_task", "val/acc/avg"], ascending=[True, False]).iloc[0] if len(near) else None


def best_per_m(summary: pd.DataFrame) -> pd.DataFrame:
    """For each source of impressions and m: the config with the best mean validation accuracy on
    the coefficient tasks (over granularity and task order)."""
    il = summary[summary["method"] == "impresslearn"]
    picks = il.loc[il.groupby(["impressions", "m"])["val/acc/avg_coeff_tasks"].idxmax()]
    return picks.sort_values(["impressions", "m"])


def _method(root: Path, row: pd.Series):
    """The trial's learned method and stream, from its final checkpoint."""
    results = json.loads((root / "results" / row["trial"] / "results.json").read_text())
    cfg = Config.from_dict({**results["config"], "threads": 1})
    ckpt = load_checkpoint(checkpoint_folder(root, cfg))
    if ckpt is None or ckpt["tasks_done"] < cfg.num_tasks:
        return None
    stream, method = build(cfg, resolve_device("cpu"))
    load_method_state(method, ckpt["method"])
    return cfg, stream, method


def transfer(root: Path, table: pd.DataFrame) -> dict[str, list[float]]:
    """Each SupSup trial: mean test accuracy of a stored mask on every other task, and on the next."""
    out: dict[str, list[float]] = {"any": [], "next": []}
    for _, row in table[table["method"] == "supsup"].iterrows():
        loaded = _method(root, row)
        if loaded is None:
            continue
        _, stream, method = loaded
        A = stored_mask_transfer(method, stream, split="test")
        out["any"].append(float(A[~np.eye(len(A), dtype=bool)].mean()))
        out["next"].append(float(np.mean([A[i, i + 1] for i in range(len(A) - 1)])))
    return out


def inference(root: Path, table: pd.DataFrame, configs_: list[str], *, fit: bool = False) -> pd.DataFrame:
    """Task identification on test from batches of 128, per trial of each config in `configs_`:
    one-shot H for every method, and with `fit` ImpressLearn's label-free fit (about 10 times the
    one-shot's cost)."""
    rows = []
    for _, row in table[table["config"].isin(configs_)].iterrows():
        loaded = _method(root, row)
        if loaded is None:
            continue
        cfg, stream, method = loaded
        rules = ("oneshot_h", "fit") if fit and cfg.method == "impresslearn" else ("oneshot_h",)
        gn = replace(cfg, scenario="GNu", infer_rules=rules, infer_batch_size=128)
        m = evaluate_inference(method, stream, gn, scenarios=("GNu",), split="test")
        for rule in rules:
            rows.append(
                {
                    "config": row["config"],
                    "seed": row["seed"],
                    "rule": rule,
                    "identified": m[f"task_infer/acc/{rule}"],
                    "gnu": m[f"acc/gnu/{rule}"],
                }
            )
    return pd.DataFrame(rows)


def claims(root: Path, out: Path, *, checkpoints: bool, fit: bool = False) -> str:
    table = trials(root)
    summary = configs(table)
    name = root.name
    summary.to_csv(out / f"{name}_configs.csv", index=False)
    commits = sorted({c[:10] for c in table["commit"].dropna()})
    seeds = ",".join(map(str, sorted(table["seed"].unique())))
    parts = [
        f"### {name}: {len(table)} trials, {len(summary)} configs, seeds {seeds}",
        "",
        f"Mean ± sample std over seeds (n per row), accuracy on test unless marked val; commit {', '.join(commits)}.",
        "",
        config_table(summary),
        "",
        "Best granularity / task order at each m, chosen on validation (coefficient tasks):",
        "",
        "| impressions | m | chosen config | val acc (coefficient tasks) | **test acc (coefficient tasks)** "
        "| bits per task |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in best_per_m(summary).iterrows():
        parts.append(
            f"| {r['impressions']} | {r['m']} | {r['config']} | {_pm(r, 'val/acc/avg_coeff_tasks')} "
            f"| {_pm(r, 'test/acc/avg_coeff_tasks')} | {int(r['bits/per_task']):,} |"
        )
    pick = cheapest_near_supsup(summary)
    supsup = summary[summary["method"] == "supsup"]
    if pick is not None:
        s = supsup.iloc[0]
        parts += [
            "",
            f"Cheapest config within {WITHIN * 100:.0f} points of SupSup's validation accuracy: **{pick['config']}**, "
            f"test {_pm(pick, 'test/acc/avg')} against SupSup's {_pm(s, 'test/acc/avg')}, at "
            f"{int(pick['bits/per_task']):,} bits per task = {pick['bits/per_task'] / s['bits/per_task']:.2%} "
            f"of SupSup's {int(s['bits/per_task']):,}.",
        ]
    elif len(supsup):
        parts += ["", f"No config comes within {WITHIN * 100:.0f} points of SupSup's validation accuracy."]
    if checkpoints:
        t = transfer(root, table)
        if t["any"]:
            parts += [
                "",
                f"One stored SupSup mask alone on another task (test, n = {len(t['any'])} trials, chance 0.10): "
                f"any other task {_spread(t['any'])}, the next task {_spread(t['next'])}.",
            ]
        chosen = [*supsup["config"], *([pick["config"]] if pick is not None else []), *best_per_m(summary)["config"]]
        inf = inference(root, table, list(dict.fromkeys(chosen)), fit=fit)
        if len(inf):
            inf.to_csv(out / f"{name}_inference.csv", index=False)
            g = inf.groupby(["config", "rule"], sort=False)
            parts += [
                "",
                "Task identity inferred from batches of 128 test images (GNu: a wrong guess scores 0):",
                "",
                "| config | rule | n | tasks identified | GNu accuracy |",
                "|---|---|---|---|---|",
            ]
            for (config, rule), frame in g:
                parts.append(
                    f"| {config} | {rule} | {len(frame)} | {_spread(frame['identified'])} | {_spread(frame['gnu'])} |"
                )
    text = "\n".join(parts) + "\n"
    (out / f"{name}_claims.md").write_text(text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (runs/studies/NAME)")
    parser.add_argument("--out", type=Path, default=Path("analysis/results"))
    parser.add_argument("--no-checkpoints", action="store_true", help="only the trials' metrics (fast)")
    parser.add_argument("--fit", action="store_true", help="also ImpressLearn's label-free fit rule (slow)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    print(f"<!-- analysis/paper_claims.py at {prov['git_commit']}{'+dirty' if prov['git_dirty'] else ''} -->")
    for root in args.studies:
        print(claims(root, args.out, checkpoints=not args.no_checkpoints, fit=args.fit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
