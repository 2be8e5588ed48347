"""(g) Paper scale: a training epoch of LeNet-300-100 on real MNIST, and the shipped MNIST studies.

Each step (top-k masks, ImpressLearn coefficients at m = 10 and 32) is timed side by side with the
dense step of the same backbone on real MNIST batches; the figure is the ratio, and the detail turns
it into seconds per epoch (50,000 training images, batches of 128). Reported, not judged.

The wall time of each shipped MNIST study is read from its MLflow parent run (start to end) in the
tracking store `impress` uses by default ($MLFLOW_TRACKING_URI, else ./mlflow.db); a study not run
against that store is reported as not run. Without MNIST (`impress data mnist`) every figure is NaN
and its detail says why.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from bench.report import Figure, ratio_figure
from bench.steps import backbone, coefficient_step, dense_step, store_random_bank, topk_step
from bench.timing import side_by_side
from impress.seeding import generator
from impress.streams import DatasetMissingError, batches, build_stream
from impress.tracking import KIND_TAG, default_tracking_uri

__all__ = ["FIGURES", "STUDIES", "run"]

STEPS = ("topk", "coef/layer/m=10", "coef/layer/m=32", "coef/channel/m=10", "coef/channel/m=32")
STUDIES = ("rotated_mnist_lenet", "permuted_mnist_lenet")
FIGURES = (*(f"mnist/{s}" for s in STEPS), *(f"mnist/study/{s}" for s in STUDIES))
EPOCH_STEPS = math.ceil(50_000 / 128)


def _missing(reason: str) -> list[Figure]:
    return [
        Figure(name, "not measured", float("nan"), "s" if "/study/" in name else "x", detail=reason) for name in FIGURES
    ]


def _study_seconds(name: str, uri: str) -> Figure:
    """A shipped study's wall time, from its MLflow parent run (which spans its first start to its end)."""
    figure, what = f"mnist/study/{name}", f"wall time of studies/{name}.yaml, start to end"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return Figure(figure, what, float("nan"), "s", detail=f"not run here (no store {uri})")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], f"tags.`{KIND_TAG}` = 'study'") if experiment else []
    ended = [r for r in runs if r.info.end_time]
    if not ended:
        return Figure(figure, what, float("nan"), "s", detail=f"not run to its end in {uri}")
    run = ended[0]
    seconds = (run.info.end_time - run.info.start_time) / 1000.0
    trials = len(client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"))
    return Figure(figure, what, seconds, "s", n=trials, detail=f"{trials} trials, {seconds / 60:.1f} min, {uri}")


def run(*, repeats: int, quick: bool, clock: str) -> list[Figure]:
    try:
        task = build_stream("permuted", "mnist", num_tasks=1, seed=0)[0]
    except DatasetMissingError:
        return _missing("MNIST is not in the default data folder: run `impress data mnist`")
    x, y = task.train_data()
    pool = list(batches(x, y, 128, generator("bench_mnist")))[: 4 if quick else 16]
    in_shape = tuple(x.shape[1:])
    dense = dense_step(backbone("lenet300", in_shape), pool)
    net = backbone("lenet300", in_shape)
    store_random_bank(net, 32)  # one bank; a combination of m uses its first m masks
    steps = {"mnist/topk": topk_step(backbone("lenet300", in_shape), pool)}
    for name in STEPS[1:]:
        _, granularity, m = name.split("/")
        steps[f"mnist/{name}"] = coefficient_step(net, pool, m=int(m[2:]), granularity=granularity)
    ratios = side_by_side(dense, steps, repeats=repeats, warmup=2 if quick else 3, clock=clock)
    figures = []
    for name, ratio in ratios.items():
        what = f"{name.removeprefix('mnist/')} step / dense step, LeNet-300-100 on MNIST, batch 128"
        figure = ratio_figure(name, what, ratio, None, labels=("dense", "step"))
        dense_s, step_s = (ms * EPOCH_STEPS / 1000 for ms in (ratio.base_ms, ratio.cand_ms))
        epoch = f"; an epoch ({EPOCH_STEPS} steps): dense {dense_s:.1f} s, this {step_s:.1f} s"
        figures.append(dataclasses.replace(figure, detail=figure.detail + epoch))
    uri = default_tracking_uri()
    return figures + [_study_seconds(name, uri) for name in STUDIES]
