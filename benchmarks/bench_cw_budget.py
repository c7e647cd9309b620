"""Where Carlini–Wagner's gradient passes go, per binary-search step (not a test).

Runs our ``cw`` search on the first ``--n`` bundled MNIST test images of each bundled
checkpoint, through an instrumented subclass that records, for every binary-search step
and sample, the constant c, the gradient passes the step cost and the sample's best
squared distance before and after it. Nothing in the search changes: the rows are those
``build_search("cw", config).run`` returns.

Each step of a sample falls in one class:

* ``before first success`` — no adversarial found yet, and this step found none (c too small);
* ``first success`` — the step that found the sample's first adversarial;
* ``improved ≥ 1 %`` / ``improved < 1 %`` / ``no improvement`` — later steps, by how much
  they lowered the sample's best distance.

Per config the script prints the mean passes per image in each class, the constant c at
which samples were first fooled, and the median L2 and optimality (the final distance over
the distance after k steps) if the search had stopped after k binary steps.

    python benchmarks/bench_cw_budget.py                          # paper and quick configs, 256 images
    python benchmarks/bench_cw_budget.py --n 64 --configs paper --json cw_budget.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter

import numpy as np
import torch

from robustbench_jr.attacks.cw import CWSearch
from robustbench_jr.data import bundled_mnist
from robustbench_jr.evaluation.plan import BUDGETS
from robustbench_jr.models import load_checkpoint

CONFIGS = {
    "paper": {},
    "paper with fail_check_every 10": {"fail_check_every": 10},
    "quick": dict(BUDGETS["quick"].get("cw", {})),
}
CLASSES = ("before first success", "first success", "improved ≥ 1 %", "improved < 1 %", "no improvement")


class _Instrumented(CWSearch):
    """CWSearch recording every binary-search step (per sample: c, passes, best before/after)."""

    def _optimise(self, model, x, y, t0, scale, idx, w_start, c, kappa, best_sq, best_adv, w_last, tally,
                  from_adv):
        before = best_sq[idx].clone()
        grads = tally.grad[idx].clone()
        cs = c[idx].clone()
        success = super()._optimise(model, x, y, t0, scale, idx, w_start, c, kappa, best_sq, best_adv,
                                    w_last, tally, from_adv)
        self.log.append({"idx": idx.tolist(), "c": cs.tolist(), "passes": (tally.grad[idx] - grads).tolist(),
                         "before": before.tolist(), "after": best_sq[idx].tolist()})
        return success


def classify(before: float, after: float) -> str:
    if math.isinf(before):
        return "first success" if math.isfinite(after) else "before first success"
    if after < before * (1 - 0.01) ** 2:   # squared distances: ≥ 1 % in L2
        return "improved ≥ 1 %"
    return "improved < 1 %" if after < before else "no improvement"


def analyse(log: list, attacked: np.ndarray, steps: int) -> dict:
    n = int(attacked.sum())
    passes = Counter()
    first_c = Counter()
    per_step_passes = np.zeros(steps)
    # best squared distance of each sample after k steps (k = 1 … steps)
    after_k = np.full((steps, n), np.inf)   # the log indexes the attacked samples only
    k_of = Counter()
    for rec in log:
        for i, c, p, b, a in zip(rec["idx"], rec["c"], rec["passes"], rec["before"], rec["after"]):
            k = k_of[i]
            k_of[i] += 1
            cls = classify(b, a)
            passes[cls] += p
            per_step_passes[k] += p
            after_k[k, i] = a
            if cls == "first success":
                first_c[f"{c:g}"] += 1
    # a sample that left the search early keeps its distance for the later k
    for k in range(1, steps):
        after_k[k] = np.minimum(after_k[k], after_k[k - 1])
    final = np.sqrt(after_k[-1])
    trunc = []
    cum = np.cumsum(per_step_passes) / n
    for k in range(steps):
        d = np.sqrt(after_k[k])
        with np.errstate(divide="ignore", invalid="ignore"):
            opt = np.where(np.isfinite(d), final / d, 0.0)
        trunc.append({"steps": k + 1, "passes": float(cum[k]), "success": float(np.isfinite(d).mean()),
                      "median_l2": float(np.median(d)), "mean_opt_vs_final": float(opt.mean())})
    return {"n": n, "passes": {k: passes[k] / n for k in CLASSES}, "total": sum(passes.values()) / n,
            "first_success_c": dict(sorted(first_c.items(), key=lambda t: float(t[0]))),
            "median_l2": float(np.median(final)), "truncated": trunc}


def render(res: dict) -> str:
    out = []
    for key, r in res.items():
        out.append(f"### {key} — {r['n']} images, {r['total']:.0f} gradient passes per image, "
                   f"median L2 {r['median_l2']:.4f}")
        out.append("")
        out.append("| steps of a sample | passes / image | share |")
        out.append("|---|---:|---:|")
        for cls in CLASSES:
            p = r["passes"][cls]
            out.append(f"| {cls} | {p:.0f} | {p / r['total']:.0%} |")
        out.append("")
        out.append("first fooled at c = " + ", ".join(f"{c}: {k}" for c, k in r["first_success_c"].items()))
        out.append("")
        out.append("| stop after k binary steps | passes / image | success | median L2 | mean final/L2 |")
        out.append("|---:|---:|---:|---:|---:|")
        for t in r["truncated"]:
            out.append(f"| {t['steps']} | {t['passes']:.0f} | {t['success']:.3f} | {t['median_l2']:.4f} | "
                       f"{t['mean_opt_vs_final']:.4f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--checkpoints", default="lenet-mnist,lenet-mnist-jr")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = bundled_mnist()
    x, y, ids = ds.pixels()[:args.n], ds.labels[:args.n], ds.ids[:args.n]
    res = {}
    for ckpt in [c for c in args.checkpoints.split(",") if c]:
        model, _ = load_checkpoint(ckpt)
        model.eval()
        with torch.no_grad():
            attacked = (model(x).argmax(1) == y).numpy()
        for name in [c for c in args.configs.split(",") if c]:
            search = _Instrumented(CONFIGS[name])
            search.log = []
            search.run(model, x, y, seed=0, sample_ids=ids)
            res[f"{ckpt}, cw ({name})"] = analyse(search.log, attacked, search.config.binary_search_steps)
            print(render({f"{ckpt}, cw ({name})": res[f"{ckpt}, cw ({name})"]}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
