"""Batch-size dependence of the searches' per-sample distances, float32 vs float64.

The same N bundled MNIST images are searched in batches of 64, 16 and 1; per search and
precision it prints how many per-sample L2 distances differ from the batch-64 run, how
many by more than 1e-6 / 1e-4 relative, the largest relative difference, the samples
whose fooled/not-fooled outcome changed, and the wall time of float64 relative to
float32 at the same batch size (runs interleaved in one process). Not a test:
tests/test_batch_independence.py holds the float64 numbers to their tolerances.

    python benchmarks/bench_batch_size.py                          # pgd, deepfool, cw (quick), N=64
    python benchmarks/bench_batch_size.py --searches cw --budget paper --n 32
    python benchmarks/bench_batch_size.py --device cuda --batch-sizes 64,16 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import robustbench_jr
from robustbench_jr.attacks import build_search
from robustbench_jr.data import bundled_mnist
from robustbench_jr.evaluation.plan import BUDGETS


def by_batch(search, model, x, y, bs):
    """(per-sample L2, seconds, gradient passes) of ``search`` over ``x`` in batches of ``bs``."""
    ids = torch.arange(len(x))
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = [search.run(model, x[i:i + bs], y[i:i + bs], seed=0, sample_ids=ids[i:i + bs]) for i in range(0, len(x), bs)]
    l2 = torch.cat([o.l2 for o in out]).cpu()
    return l2, time.perf_counter() - t, int(sum(int(o.n_grad.sum()) for o in out))


def compare(a, ref):
    both = torch.isfinite(a) & torch.isfinite(ref)
    rel = torch.zeros_like(a)
    rel[both] = ((a - ref).abs() / ref.abs().clamp_min(1e-12))[both]
    differ = (a != ref) & ~(torch.isinf(a) & torch.isinf(ref))
    return {"differ": int(differ.sum()), "over_1e-6": int((rel > 1e-6).sum()), "over_1e-4": int((rel > 1e-4).sum()),
            "max_rel": float(rel.max()), "fooled_changed": int((torch.isfinite(a) != torch.isfinite(ref)).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--searches", default="pgd,deepfool,cw")
    ap.add_argument("--budget", choices=list(BUDGETS), default="quick")
    ap.add_argument("--checkpoint", default="lenet-mnist")
    ap.add_argument("--batch-sizes", default="64,16,1", help="the first is the reference")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time each (batch size, precision) this many times, alternating which precision goes "
                         "first, and keep the fastest")
    ap.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = robustbench_jr.load_model(args.checkpoint, device=args.device)
    d = bundled_mnist()
    x = d.images[: args.n].float()
    x = x / 255 if d.images.dtype == torch.uint8 else x
    x, y = x.to(args.device), d.labels[: args.n].long().to(args.device)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    report = {}
    for name in [s.strip() for s in args.searches.split(",") if s.strip()]:
        over = dict(BUDGETS[args.budget].get(name, {}))
        l2, secs, grads = {}, {}, {}
        for bs in sizes:
            for r in range(args.repeat):
                for prec in (("float32", "float64") if r % 2 == 0 else ("float64", "float32")):
                    l2[prec, bs], t, grads[prec, bs] = by_batch(build_search(name, {**over, "precision": prec}),
                                                                model, x, y, bs)
                    secs[prec, bs] = min(t, secs.get((prec, bs), float("inf")))
        rows = {}
        for prec in ("float32", "float64"):
            for bs in sizes[1:]:
                rows[f"{prec} batch {bs} vs {sizes[0]}"] = compare(l2[prec, bs], l2[prec, sizes[0]])
        cost = {f"batch {bs}": round(secs["float64", bs] / secs["float32", bs], 2) for bs in sizes}
        per_grad = {f"batch {bs}": round((secs["float64", bs] / max(grads["float64", bs], 1))
                                         / (secs["float32", bs] / max(grads["float32", bs], 1)), 2) for bs in sizes}
        report[name] = {"differences": rows, "float64_time_ratio": cost, "float64_time_per_gradient_ratio": per_grad,
                        "seconds": {f"{p} batch {bs}": round(t, 2) for (p, bs), t in secs.items()},
                        "gradient_passes": {f"{p} batch {bs}": g for (p, bs), g in grads.items()}}
        print(f"== {name} ({args.budget}), N={args.n}, {args.checkpoint}, {args.threads} thread(s)")
        for k, v in rows.items():
            print(f"  {k:28s} differ {v['differ']:3d}  >1e-6 {v['over_1e-6']:3d}  >1e-4 {v['over_1e-4']:3d}  "
                  f"max rel {v['max_rel']:.3g}  fooled changed {v['fooled_changed']}")
        print("  time float64 / float32: " + ", ".join(f"{k} {v:.2f}x" for k, v in cost.items())
              + "; per gradient pass: " + ", ".join(f"{k} {v:.2f}x" for k, v in per_grad.items()), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
