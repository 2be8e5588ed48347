"""`python -m bench`: print every performance figure against its target.

`python -m bench` runs all sections with full repeats (about 12 minutes, 7 of them the platform
study); `--quick` is the short version the tests run (about a minute); `--only topk data` runs some
sections; `--json PATH` also writes the figures with their provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bench import data, inference, mixture, mnist, platform, storage, topk
from bench.report import format_table
from bench.timing import CLOCKS
from impress.provenance import provenance

SECTIONS = {
    "topk": topk,
    "mixture": mixture,
    "storage": storage,
    "inference": inference,
    "data": data,
    "platform": platform,
    "mnist": mnist,
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller data (CI)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads for every figure (default 1: one trial per core)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per ratio (default 30; quick 8)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time, or process CPU time")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS), default=list(SECTIONS), metavar="SECTION")
    p.add_argument("--json", metavar="PATH", help="write figures and provenance as JSON")
    p.add_argument("--list", action="store_true", help="print the figure names and exit")
    args = p.parse_args(argv)
    if args.threads < 1 or (args.repeats is not None and args.repeats < 2):
        p.error("--threads must be at least 1 and --repeats at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        print("\n".join(name for key in args.only for name in SECTIONS[key].FIGURES))
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = args.repeats or (8 if args.quick else 30)
    prov = provenance()
    commit = (prov["git_commit"] or "unknown")[:10] + ("+dirty" if prov["git_dirty"] else "")
    print(
        f"impress bench  commit {commit}  torch {prov['versions']['torch']}  threads {torch.get_num_threads()}  "
        f"clock {args.clock}  repeats {repeats}{'  (quick)' if args.quick else ''}",
        flush=True,
    )
    figures, start = [], time.perf_counter()
    for key in args.only:
        section_start = time.perf_counter()
        produced = SECTIONS[key].run(repeats=repeats, quick=args.quick, clock=args.clock)
        missing = set(SECTIONS[key].FIGURES) - {f.name for f in produced}
        if missing:
            raise RuntimeError(f"section {key} did not produce {sorted(missing)}")
        figures += produced
        print(f"\n[{key}] {time.perf_counter() - section_start:.1f} s", flush=True)
        print(format_table(produced), flush=True)
    judged = [f for f in figures if f.met is not None]
    met = sum(f.met for f in judged)
    print(f"\ntargets met: {met}/{len(judged)}  ({time.perf_counter() - start:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"provenance": prov, "args": vars(args), "figures": [f.as_dict() for f in figures]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
