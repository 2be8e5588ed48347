"""(a) The top-k masked training step against the dense step of the same backbone.

Target: MLP 784-1024-1024-10, batch 128, density 0.5: at most 1.5x the dense step. The
small conv net (1x28x28) and GEM ResNet-18 (3x32x32, batch 32) are reported beside it. Each is
timed twice in the same rounds: the fused CPU path every run takes (`impress.fused_topk`) and, as
`<name>/eager`, the eager torch path (what other devices run; the same result).

NOTE: the MLP is timed after 50 warm-up steps (20 with --quick), as inside a task (~1,000 steps):
over the first ~25 steps of fresh scores the threshold moves fast and a step costs ~10% more.
"""

from __future__ import annotations

from bench.report import Figure, ratio_figure
from bench.steps import backbone, batches, dense_step, topk_step
from bench.timing import side_by_side

__all__ = ["FIGURES", "run"]

# name: (backbone, input shape, batch size, warm-up steps (full, quick), target)
CASES = {
    "topk/mlp": ("fc1024", (1, 28, 28), 128, (50, 20), ("<=", 1.5)),
    "topk/convnet": ("convnet", (1, 28, 28), 128, (5, 3), None),
    "topk/resnet18": ("resnet18", (3, 32, 32), 32, (5, 3), None),
}
FIGURES = tuple(f"{name}{suffix}" for name in CASES for suffix in ("", "/eager"))


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    figures = []
    for name, (arch, in_shape, batch_size, warmup, target) in CASES.items():
        data = batches(in_shape, batch_size)
        dense = dense_step(backbone(arch, in_shape), data)
        steps = {
            f"{name}{suffix}": topk_step(backbone(arch, in_shape), data, fused=not suffix) for suffix in ("", "/eager")
        }
        n = max(3, repeats // 3) if arch == "resnet18" else repeats
        ratios = side_by_side(dense, steps, repeats=n, warmup=warmup[quick], clock=clock)
        what = (
            f"top-k step / dense step, {arch} {'x'.join(map(str, in_shape))} batch {batch_size} density 0.5, "
            f"after {warmup[quick]} warm-up steps"
        )
        figures.append(ratio_figure(name, what, ratios[name], target, labels=("dense", "top-k")))
        eager = f"{name}/eager"
        figures.append(ratio_figure(eager, f"{what}; eager torch path", ratios[eager], None, labels=("dense", "top-k")))
    return figures
