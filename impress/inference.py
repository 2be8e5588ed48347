"""Task-identity inference for the GN scenarios: which stored task does an unlabelled batch come from?

Every stored task is a row of coefficients over one set of masks, a `TaskBasis`:

    supsup        T tasks over the T bank masks: C = I (T, T); coefficients c give Mixture(c)
    impresslearn  T tasks over the m impressions: C (T, size); a dedicated task (solved by bank
                  mask t) is the one-hot e_t in every coefficient row, a later task its stored row

The superposition of all tasks with weights beta (T,) is then ONE combination, c = beta @ C:

    sum_t beta_t sum_i C[t, i] M_i  =  sum_i (beta @ C)_i M_i

For SupSup this is SupSup's own superposition, a mixture of T masks (cost per step grows with T);
for ImpressLearn it is a mixture of the m impressions whatever T is (T enters only through the
(T,) x (T, size) product), so one forward/backward covers any number of tasks.

Rules (`RULES`), each with an objective on the output logits:

    oneshot_h / oneshot_g  beta = 1/T; pick argmin_t dObjective/dbeta_t (SupSup's one-shot)
    oneshot_h_real         the same with H_real
    binary_h / binary_g    keep the half of the candidates with the most negative gradients until
                           one is left (SupSup's binary search); `cfg.infer_binary_steps` caps the
                           halvings, the last gradient then picks among those left
    binary_h_real          the same with H_real
    fit                    label-free: start from a combination (the one-shot pick's, or the mean of
                           the stored rows), minimise H_real over the coefficients c themselves
                           for a few Adam steps, classify with the adapted c; its reported task is
                           the stored row nearest to the adapted c (only GNu needs one)

Objectives: H (SupSup's), the entropy of the softmax over ALL outputs, superfluous ones included;
H_real, the entropy of the softmax over the real classes only, the prediction that is actually made
(equal to H without superfluous outputs; with them, H also rewards a task whose superfluous outputs
stay low, which is G's signal, and H_real does not: kept to measure what that signal is worth);
G (SupSup), the logsumexp of all outputs with the real classes' logits detached, so the gradient
flows only through the superfluous outputs, which training pushes down for every task's own data.

Gain (ImpressLearn, `cfg.infer_gain`): learned coefficient rows make the logits several times larger
than a binary mask does, which no prediction sees but every entropy search does: such a row wins
the one-shot for any data. "unit" (default) rescales every row to the logit scale of a binary mask
(`TaskBasis.gain`); dedicated tasks are then found like SupSup's. It does not make the learned rows
identifiable: at gain 1 they are unsure of their own data too (measured on permuted digits).

BatchNorm: a superposition has no stored statistics. While a rule searches, every BatchNorm
normalises with the statistics of the inferred batch itself (a single image: its own spatial
statistics) and updates nothing. A picked task then classifies with its own view (its stored
statistics), exactly as in GG; the adapted combination of `fit` keeps the batch statistics.

Single images are inferred independently but together: a rule runs on G groups of n images,
vectorised over the groups with `torch.func.vmap` (batch: G = 1, n = batch; single: G = N, n = 1).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from impress.basis import TaskBasis
from impress.config import Config
from impress.layers import MaskSource, Mixture, task_view, unit_blocks
from impress.streams import Stream

__all__ = [
    "TaskBasis",
    "Rule",
    "RULES",
    "OBJECTIVES",
    "Inference",
    "task_basis",
    "batch_statistics",
    "entropy",
    "real_entropy",
    "superfluous_logsumexp",
    "identify",
    "infer",
    "evaluate_inference",
]

CHUNK = 32  # groups per vmap call: bounds the per-group mixed weights held at once (CHUNK x weights)


def task_basis(method: nn.Module, *, gain: str = "unit") -> TaskBasis:
    """The method's stored tasks as a `TaskBasis` (`Method.task_basis`: SupSup's over its T masks,
    ImpressLearn's over its m impressions).

    gain="unit": ImpressLearn's rows are rescaled to gain 1 (`TaskBasis.gain`) and `fit` searches at
    gain 1; SupSup's rows are not rescaled (its masks share one density, and its rule stays SupSup's).
    gain="raw": the rows as stored, and `fit` free to scale."""
    return method.task_basis(unit_gain=gain == "unit")


@contextmanager
def batch_statistics(net: nn.Module) -> Iterator[nn.Module]:
    """Within the block every BatchNorm of `net` normalises with the batch's own statistics and
    updates no running statistics (NOTE: a superposition of tasks has no stored statistics)."""
    norms = [n for n in net.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)]
    saved = [(n.training, n.track_running_stats) for n in norms]
    for n in norms:
        n.training, n.track_running_stats = True, False
    try:
        yield net
    finally:
        for n, (training, track) in zip(norms, saved):
            n.training, n.track_running_stats = training, track


# ---------------------------------------------------------------------------------------------
# Objectives: logits (n, classes + superfluous) -> (n,)


def entropy(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """H (SupSup's): entropy of the softmax over all outputs, superfluous ones included."""
    return -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1)


def real_entropy(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """H_real: entropy of the softmax over the real classes only."""
    return entropy(logits[:, :classes], classes)


def superfluous_logsumexp(logits: torch.Tensor, classes: int) -> torch.Tensor:
    """G (SupSup): logsumexp of all outputs, the real classes' logits detached."""
    return torch.cat([logits[:, :classes].detach(), logits[:, classes:]], dim=1).logsumexp(dim=1)


OBJECTIVES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "H": entropy,
    "H_real": real_entropy,
    "G": superfluous_logsumexp,
}


@dataclass(frozen=True)
class Rule:
    search: str  # oneshot | binary | fit
    objective: str  # a key of OBJECTIVES


RULES: dict[str, Rule] = {
    "oneshot_h": Rule("oneshot", "H"),
    "oneshot_g": Rule("oneshot", "G"),
    "binary_h": Rule("binary", "H"),
    "binary_g": Rule("binary", "G"),
    "oneshot_h_real": Rule("oneshot", "H_real"),
    "binary_h_real": Rule("binary", "H_real"),
    "fit": Rule("fit", "H_real"),
}


# ---------------------------------------------------------------------------------------------
# The searches, over G groups of n images: xs (G, n, C, H, W)


@dataclass(frozen=True, eq=False)
class _FloatMixture:
    """`Mixture` as a product with the layer's float masks: plain tensor ops, which functorch
    transforms (vmap) accept. NOTE: `Mixture` itself gathers from lookup tables in a custom
    autograd function: faster, but not transformable."""

    alpha: torch.Tensor

    def __call__(self, layer: nn.Module) -> torch.Tensor:
        m = self.alpha.shape[-1]
        bank = layer.bank_float(m)[:m]  # (m, out, ...)
        if self.alpha.dim() == 1:
            return torch.tensordot(self.alpha, bank, dims=1)
        out = bank.shape[1]
        rows = torch.arange(self.alpha.shape[0], device=self.alpha.device)
        row_of_unit = rows.repeat_interleave(torch.tensor(unit_blocks(out, len(rows)), device=rows.device))
        per_unit = self.alpha.index_select(0, row_of_unit)  # (out, m): each unit its row's coefficients
        return torch.einsum("om,mor->or", per_unit, bank.flatten(start_dim=2)).view(bank.shape[1:])


def _transformable(sources: Sequence[MaskSource]) -> list[MaskSource]:
    return [_FloatMixture(s.alpha) if isinstance(s, Mixture) else s for s in sources]


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _objective(
    basis: TaskBasis, net: nn.Module, name: str, classes: int, *, over_tasks: bool
) -> Callable[[bool], Objective]:
    """A maker of f(v, x) -> scalar, the mean objective of batch x under task weights beta = v
    (over_tasks) or under the combination coefficients c = v; `make(True)` is vmap-able."""
    objective = OBJECTIVES[name]

    def make(transformable: bool) -> Objective:
        def f(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            sources = basis.superpose(v) if over_tasks else basis.sources(basis.unit(v))
            with task_view(net, _transformable(sources) if transformable else sources):
                return objective(net(x), classes).mean()

        return f

    return make


def _gradients(make: Callable[[bool], Objective], v: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """df/dv of each group: v (G, k), xs (G, n, ...) -> (G, k), vectorised over the groups."""
    if len(v) == 1:  # one batch: plain autograd (measured here: vmap of one group costs ~1.3x)
        v0 = v[0].detach().requires_grad_(True)
        return torch.autograd.grad(make(False)(v0, xs[0]), v0)[0].unsqueeze(0)
    g = vmap(grad(make(True)))
    return torch.cat([g(v[i : i + CHUNK], xs[i : i + CHUNK]) for i in range(0, len(v), CHUNK)])


def _oneshot(f: Callable[[bool], Objective], T: int, xs: torch.Tensor) -> torch.Tensor:
    beta = torch.full((len(xs), T), 1.0 / T, device=xs.device)  # (G, T)
    return _gradients(f, beta, xs).argmin(dim=1)


def _binary(f: Callable[[bool], Objective], T: int, xs: torch.Tensor, steps: int | None) -> torch.Tensor:
    candidates = torch.ones(len(xs), T, dtype=torch.bool, device=xs.device)  # (G, T)
    step = 0
    while (n := int(candidates[0].sum())) > 1:  # every group holds the same number of candidates
        g = _gradients(f, candidates.float() / n, xs).masked_fill(~candidates, math.inf)
        if steps is not None and step == steps:
            return g.argmin(dim=1)
        keep = g.topk(math.ceil(n / 2), dim=1, largest=False).indices
        candidates = torch.zeros_like(candidates).scatter_(1, keep, True)
        step += 1
    return candidates.float().argmax(dim=1)


def _fit(
    basis: TaskBasis, net: nn.Module, classes: int, xs: torch.Tensor, cfg: Config
) -> tuple[torch.Tensor, torch.Tensor]:
    if cfg.infer_fit_start == "oneshot":
        start = basis.coeffs[_oneshot(_objective(basis, net, "H", classes, over_tasks=True), basis.num_tasks, xs)]
    else:
        start = basis.coeffs.mean(dim=0).expand(len(xs), -1)
    c = basis.unit(start).requires_grad_(True)  # (G, size); Adam is elementwise: the groups stay independent
    opt = torch.optim.Adam([c], lr=cfg.infer_fit_lr)
    f = _objective(basis, net, "H_real", classes, over_tasks=False)  # the entropy of what it classifies
    for _ in range(cfg.infer_fit_steps):
        c.grad = _gradients(f, c.detach(), xs)
        opt.step()
    c = basis.unit(c.detach())
    return torch.cdist(c, basis.coeffs).argmin(dim=1), c


def identify(
    basis: TaskBasis, net: nn.Module, xs: torch.Tensor, rule: str, cfg: Config, *, classes: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The task each group of images comes from (G,), and for `fit` the adapted coefficients (G, size)."""
    spec = RULES[rule]
    with torch.enable_grad(), batch_statistics(net):
        if spec.search == "fit":
            return _fit(basis, net, classes, xs, cfg)
        f = _objective(basis, net, spec.objective, classes, over_tasks=True)
        if spec.search == "oneshot":
            return _oneshot(f, basis.num_tasks, xs), None
        return _binary(f, basis.num_tasks, xs, cfg.infer_binary_steps), None


@dataclass(frozen=True)
class Inference:
    task: torch.Tensor  # (N,) the task inferred for each image (shared by the images of a group)
    pred: torch.Tensor  # (N,) the predicted class of each image under that inference
    seconds: float  # wall time of identification and classification


@torch.no_grad()
def infer(
    method: nn.Module,
    x: torch.Tensor,
    rule: str,
    cfg: Config,
    *,
    classes: int,
    single: bool = False,
    basis: TaskBasis | None = None,
) -> Inference:
    """Infer the task of the batch x (N, C, H, W) (single: of each image alone) and classify it."""
    began = time.perf_counter()
    basis = basis or task_basis(method, gain=cfg.infer_gain)
    method.eval()
    xs = x.unsqueeze(1) if single else x.unsqueeze(0)  # (G, n, C, H, W)
    task, coeffs = identify(basis, method.net, xs, rule, cfg, classes=classes)
    if coeffs is not None:  # fit: classify with the adapted combination, batch statistics

        def forward(c: torch.Tensor, xg: torch.Tensor) -> torch.Tensor:
            with task_view(method.net, _transformable(basis.sources(c))):
                return method.net(xg)[:, :classes].argmax(dim=1)

        with batch_statistics(method.net):
            pred = torch.cat(
                [vmap(forward)(coeffs[i : i + CHUNK], xs[i : i + CHUNK]) for i in range(0, len(xs), CHUNK)]
            )
    else:  # a picked task classifies with its own view, as in GG
        pred = torch.empty(xs.shape[:2], dtype=torch.long, device=x.device)
        for t in task.unique().tolist():
            group = task == t
            with method.view(t):
                pred[group] = method.net(xs[group].flatten(0, 1))[:, :classes].argmax(dim=1).view(-1, xs.shape[1])
    n = xs.shape[1]
    return Inference(task.repeat_interleave(n), pred.flatten(), time.perf_counter() - began)


def evaluate_inference(
    method: nn.Module,
    stream: Stream,
    cfg: Config,
    *,
    rules: Sequence[str] | None = None,
    scenarios: Sequence[str] = ("GNs", "GNu"),
    single_images: int | None = None,
    split: str = "test",
) -> dict[str, float]:
    """Infer every learned task's `split` in batches of `cfg.infer_batch_size` (and, with
    `cfg.infer_single`, image by image: the first `single_images` of each task, default all) under
    each rule (default: `cfg.infer_rules`).

    Per rule r (suffix `_single` for single images), averaged over tasks:
      task_infer/acc/r         fraction of images whose task was identified
      acc/gns/r                accuracy of the prediction under the inferred task (shared labels)
      acc/gnu/r                the same, but images whose task was inferred wrongly score 0
      time/infer_batch_ms/r    wall time per batch (single images: time/infer_image_ms/r per image)
    The first rule is also reported without the `/r` suffix (the headline keys)."""
    rules = list(rules or cfg.infer_rules)
    classes = stream.num_classes
    basis = task_basis(method, gain=cfg.infer_gain)
    T = basis.num_tasks
    modes = [("", False), ("_single", True)] if cfg.infer_single else [("", False)]
    out: dict[str, float] = {}
    for rule in rules:
        for suffix, single in modes:
            identified, gns, gnu, seconds, calls = [], [], [], 0.0, 0
            for task in stream.tasks[:T]:
                x, y = task.data(split)
                if single and single_images is not None:
                    x, y = x[:single_images], y[:single_images]
                size = len(y) if single else cfg.infer_batch_size
                hit = torch.zeros(len(y), dtype=torch.bool, device=y.device)
                right = torch.zeros(len(y), dtype=torch.bool, device=y.device)
                for i in range(0, len(y), size):
                    result = infer(method, x[i : i + size], rule, cfg, classes=classes, single=single, basis=basis)
                    hit[i : i + size] = result.task == task.index
                    right[i : i + size] = result.pred == y[i : i + size]
                    seconds, calls = seconds + result.seconds, calls + (len(result.task) if single else 1)
                identified.append(float(hit.float().mean()))
                gns.append(float(right.float().mean()))
                gnu.append(float((hit & right).float().mean()))
            metrics = {
                f"task_infer/acc{suffix}": sum(identified) / len(identified),
                **({f"acc/gns{suffix}": sum(gns) / len(gns)} if "GNs" in scenarios else {}),
                **({f"acc/gnu{suffix}": sum(gnu) / len(gnu)} if "GNu" in scenarios else {}),
                f"time/infer_{'image' if single else 'batch'}_ms": 1000.0 * seconds / calls,
            }
            out.update({f"{k}/{rule}": v for k, v in metrics.items()})
            if rule == rules[0]:
                out.update(metrics)
    return out
