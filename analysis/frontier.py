"""The accuracy-versus-bits front of a frontier search, with and without the new knobs, over seeds.

    .venv/bin/python analysis/frontier.py runs/studies/frontier [--seeds 0 1 2] [--out DIR]

A search (`studies/frontier.yaml`) runs each proposed config once. This script takes the configs
on its front (on validation) twice, among every config and among those that use only the
original knobs (granularity global, layer or channel, coefficients stored at 32 bits), and runs
them again as a grid study with `--seeds` (the study `<search>_seeds`, beside the search; resumed
if it exists). Over those seed means it takes both fronts again, on validation, and reports them
on test with n and spread: one figure (`front.png`), a table (`frontier.md`, `front.csv`) and the
widest gap in bits per task between neighbouring points of each front. `--probe` adds configs of
your own (say, in a gap the search left unexplored), run with the same seeds as the grid study
`<search>_probe` and marked as probes in the table; they compete for the front like the others.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from impress.confirm import confirm_study, front_cases  # noqa: E402
from impress.metrics import twin  # noqa: E402
from impress.pareto import pareto_mask, seed_front, widest_gap  # noqa: E402
from impress.provenance import provenance  # noqa: E402
from impress.study import Study  # noqa: E402
from impress.study_outcome import config_keys  # noqa: E402
from impress.tuner import has_state, resume_study, run_study  # noqa: E402

ORIGINAL = {"granularity": ("global", "layer", "channel"), "alpha_bits": (32,)}


def original_knobs(rows: pd.DataFrame) -> pd.Series:
    """Rows whose config uses only the knobs that predate groups and stored precision."""
    keep = pd.Series(True, index=rows.index)
    for field, values in ORIGINAL.items():
        if field in rows:
            keep &= rows[field].isin(values)
    return keep


def _front(table: pd.DataFrame, objectives: dict[str, str]) -> pd.Series:
    return pd.Series(pareto_mask(table[list(objectives)].to_numpy(dtype=float), list(objectives.values())), table.index)


def candidates(search: Study, trials: pd.DataFrame) -> list[dict]:
    """The configs on the search's front, among all and among the original knobs (one seed each)."""
    done = trials[trials["state"] == "complete"]
    cases = [*front_cases(search, done)["case"], *front_cases(search, done[original_knobs(done)])["case"]]
    return list({repr(sorted(c.items())): c for c in cases}.values())


def grid(search: Study, storage: Path, name: str, cases: list[dict], seeds: list[int], question: str) -> Path:
    """The folder of grid study `name`, `cases` x `seeds` on the search's base, run in `storage`
    (resumed if it exists there)."""
    if has_state(storage / name):
        return resume_study(name, storage=storage).root
    study = dataclasses.replace(confirm_study(search, cases, seeds), name=name, question=question)
    print(f"running {len(cases)} configs x {len(seeds)} seeds as study {name!r}", file=sys.stderr)
    return run_study(study, storage=storage).root


def fronts(search: Study, trials: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Config means over seeds with two front flags: `front_all` and `front_original`."""
    objectives = {o.metric: o.mode for o in search.objectives}
    keys = [k for k in [*config_keys(search), "probe"] if k in trials]
    shown = [twin(m, "test") for m in objectives if twin(m, "test") != m]
    done = trials[trials["state"] == "complete"]
    configs = seed_front(done, objectives, by=keys, show=shown).drop(columns="on_front")
    configs["front_all"] = _front(configs, objectives)
    old = original_knobs(configs)
    configs["front_original"] = False
    configs.loc[old, "front_original"] = _front(configs[old], objectives)
    return configs, objectives


def _label(row: pd.Series) -> str:
    g = row["granularity"]
    gran = f"group G={int(row['groups'])}" if g == "group" else g
    probe = " (probe)" if bool(row.get("probe", False)) else ""
    return f"{row['impressions'][:3]}. m={int(row['m'])} {gran} {int(row['alpha_bits'])}-bit{probe}"


def draw(configs: pd.DataFrame, objectives: dict[str, str], path: Path, title: str) -> None:
    bits = next(m for m in objectives if m.startswith("bits/"))
    acc = next(m for m in objectives if m != bits)
    shown = twin(acc, "test")
    fig, ax = plt.subplots(figsize=(9.5, 5.4))
    ax.scatter(configs[bits], configs[shown], s=14, color="grey", alpha=0.4, lw=0, label="every config (mean)")
    for flag, colour, name in [
        ("front_original", "#4477aa", "original knobs"),
        ("front_all", "crimson", "with groups and precision"),
    ]:
        front = configs[configs[flag]].sort_values(bits)
        gap = widest_gap(front[bits])
        ax.errorbar(
            front[bits],
            front[shown],
            yerr=front[f"{shown}_std"],
            fmt="-D",
            ms=5,
            capsize=2,
            color=colour,
            label=f"front, {name}: widest gap {gap[0]:.1f}x" if gap else f"front, {name}",
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"{bits} (log scale)")
    ax.set_ylabel(f"{shown} (chosen on {acc})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def table(configs: pd.DataFrame, objectives: dict[str, str], n_seeds: str) -> str:
    bits = next(m for m in objectives if m.startswith("bits/"))
    acc = next(m for m in objectives if m != bits)
    test = twin(acc, "test")
    lines = []
    for flag, name in [("front_original", "Original knobs"), ("front_all", "With groups and precision")]:
        front = configs[configs[flag]].sort_values(bits)
        gap = widest_gap(front[bits])
        gap_text = f"{gap[0]:.1f}x ({gap[1]:,.0f} -> {gap[2]:,.0f} bits)" if gap else "n/a"
        lines += [f"**{name}**: {len(front)} configs on the front, widest gap {gap_text}.", ""]
        lines += [f"| config | bits per task | {acc} | {test} (n) |", "|---|---:|---:|---:|"]
        for _, r in front.iterrows():
            lines.append(
                f"| {_label(r)} | {r[bits]:,.0f} | {r[acc]:.3f} | "
                f"{r[test]:.3f} ± {r[f'{test}_std']:.3f} ({int(r[f'{test}_n'])}) |"
            )
        lines.append("")
    lines.append(f"Seeds {n_seeds}; ± is the sample std over seeds; fronts chosen on validation means.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("search", type=Path, help="the search study's folder (runs/studies/<name>)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--probe",
        type=yaml.safe_load,
        action="append",
        default=[],
        metavar="MAPPING",
        help="a config to run beside the front's (YAML, e.g. '{granularity: group, groups: 4}'); repeatable",
    )
    parser.add_argument("--out", type=Path, help="where to write (default: analysis/results/<search name>)")
    args = parser.parse_args()
    search = Study.from_yaml(args.search / "study.yaml")
    storage = args.search.parent
    cases = candidates(search, pd.read_csv(args.search / "trials.csv"))
    question = f"The front configs of the search {search.name!r}, each run with seeds {args.seeds}."
    folders = {False: grid(search, storage, f"{search.name}_seeds", cases, args.seeds, question)}
    if args.probe:
        question = f"Configs probing the gaps of the search {search.name!r}'s front, with seeds {args.seeds}."
        folders[True] = grid(search, storage, f"{search.name}_probe", args.probe, args.seeds, question)
    trials = pd.concat([pd.read_csv(f / "trials.csv").assign(probe=p) for p, f in folders.items()], ignore_index=True)
    configs, objectives = fronts(search, trials)
    out = args.out or Path(__file__).parent / "results" / search.name
    out.mkdir(parents=True, exist_ok=True)
    configs.to_csv(out / "front.csv", index=False)
    n_seeds = ", ".join(map(str, args.seeds))
    title = f"{search.name}: {len(configs)} configs x seeds {n_seeds}; fronts chosen on validation, drawn on test"
    draw(configs, objectives, out / "front.png", title)
    prov = provenance()
    text = table(configs, objectives, n_seeds)
    (out / "frontier.md").write_text(
        f"# {search.name}\n\n{text}\n\nCommit {prov['git_commit']}, torch {prov['versions']['torch']}.\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
