"""Time one training step: plain vs the input-gradient regularizers, as ratios to plain.

Each step is exactly what `jr-train` runs (robustbench_jr.training.step_loss + backward + SGD
update) on random data, for one model on one device. The variants are timed in interleaved
rounds (round r times every variant once, in turn), each round's times are divided by that
round's plain step, and the medians over rounds are reported: other jobs on the machine slow
every variant of a round alike.

Reference (Hoffman et al. 2019, §2.3 and App. E, on a GPU): JR with n_proj = 1 costs ≈1.3×
the plain step for LeNet' and ≈2× for ResNet-18.

    python benchmarks/bench_train_step.py [--device cpu|cuda] [--model lenet|resnet18-cifar]
        [--batch 100] [--rounds 30] [--threads 1] [--variants plain,jr1,...] [--json]
    python benchmarks/bench_train_step.py --render A.json B.json   # the README table from --json outputs

``--json`` prints one object: {"device", "model", "variants": {name: median ratio to plain},
"ms": {name: median ms per step}, "batch", "rounds", "threads", "torch", "auto_estimator", "cpu"}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from robustbench_jr.jacobian import build_regularizer, resolve_estimator
from robustbench_jr.models import make_model
from robustbench_jr.training import step_loss

#: name → (regularizer, options, λ, what it is)
VARIANTS = {
    "plain": ("none", {}, 0.0, "cross-entropy only"),
    "jr1": ("jr", {"n_proj": 1}, 0.01, "JR n_proj = 1, default estimator (auto)"),
    "jr1-vjp": ("jr", {"n_proj": 1, "estimator": "vjp"}, 0.01, "JR n_proj = 1, Algorithm 1 (reverse over reverse)"),
    "jr1-jvp": ("jr", {"n_proj": 1, "estimator": "jvp"}, 0.01, "JR n_proj = 1, forward-mode probe"),
    "jr1-fd": ("jr", {"n_proj": 1, "estimator": "fd"}, 0.01, "JR n_proj = 1, finite difference (biased)"),
    "jr1-before": ("jr", {"n_proj": 1, "estimator": "vjp"}, 0.01,
                   "JR n_proj = 1 as before issue 19: input leaf, loss.backward() also into x"),
    "jr3": ("jr", {"n_proj": 3}, 0.01, "JR n_proj = 3, default estimator"),
    "jr3-vjp": ("jr", {"n_proj": 3, "estimator": "vjp"}, 0.01, "JR n_proj = 3, Algorithm 1"),
    "jr3-jvp": ("jr", {"n_proj": 3, "estimator": "jvp"}, 0.01, "JR n_proj = 3, forward-mode probes"),
    "jr-exact": ("jr-exact", {}, 0.01, "exact ‖J‖²_F (C backward passes)"),
    "datagrad": ("datagrad", {}, 0.01, "DataGrad / input-grad (double backprop)"),
    "spectreg": ("spectreg", {}, 0.01, "SpectReg, one Gaussian projection"),
    "cross-lipschitz": ("cross-lipschitz", {}, 0.01, "Cross-Lipschitz (exact J and its row sum)"),
}
DEFAULT_VARIANTS = "plain,jr1,jr1-vjp,jr1-jvp,jr1-fd,jr1-before,jr3,jr3-vjp,jr3-jvp,jr-exact,datagrad,cross-lipschitz"
MODELS = {"lenet": ("LeNet'", "mnist", (1, 28, 28)), "resnet18-cifar": ("ResNet-18", "cifar", (3, 32, 32))}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_before(model, reg, x, y, gen):
    """The training step as it was before issue 19: x a leaf that requires grad, so that the
    step's backward also computes ∂loss/∂x."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    return F.cross_entropy(logits, y) + reg(model, x, y, logits, generator=gen).loss


class Variant:
    def __init__(self, name, arch, norm, shape, device, x, y):
        reg_name, opts, lam, _ = VARIANTS[name]
        torch.manual_seed(0)
        self.name = name
        self.model = make_model(arch, 10, norm, shape).to(device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.reg = build_regularizer(reg_name, lam, **opts)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.x, self.y, self.device = x, y, device

    def step(self) -> float:
        _sync(self.device)
        t0 = time.perf_counter()
        if self.name == "jr1-before":
            loss = _step_before(self.model, self.reg, self.x, self.y, self.gen)
        else:
            loss = step_loss(self.model, self.reg, self.x, self.y, self.gen)[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        _sync(self.device)
        return time.perf_counter() - t0


def measure(device: str, arch: str, batch: int, rounds: int, names: list[str], warmup: int = 2,
            progress=None) -> dict:
    device = torch.device(device)
    label, norm, shape = MODELS[arch]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    names = ["plain"] + [n for n in names if n != "plain"]
    variants = [Variant(n, arch, norm, shape, device, x, y) for n in names]
    for v in variants:
        for _ in range(warmup):
            v.step()
    times = {n: [] for n in names}
    for r in range(rounds):
        for v in variants:
            times[v.name].append(v.step())
        if progress:
            progress(r + 1, rounds)
    ratios = {n: statistics.median(t / p for t, p in zip(times[n], times["plain"])) for n in names}
    return {
        "device": device.type if device.type == "cpu" else torch.cuda.get_device_name(device),
        "model": arch,
        "variants": {n: round(r, 3) for n, r in ratios.items()},
        "ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
        "batch": batch, "rounds": rounds, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "auto_estimator": {f"n_proj={n}": resolve_estimator("auto", device, n) for n in (1, 3)},
        "cpu": platform.processor() or platform.machine(),
    }


def render(results: list[dict]) -> str:
    """A markdown table (one column pair per result) from --json outputs."""
    names = [n for n in VARIANTS if any(n in r["variants"] for r in results)]
    head = "| variant | " + " | ".join(
        f"{MODELS[r['model']][0]}, {r['device']}, batch {r['batch']}: ms | × plain" for r in results) + " |"
    rows = [head, "|---|" + "---:|---:|" * len(results)]
    for n in names:
        cells = []
        for r in results:
            if n in r["variants"]:
                cells += [f"{r['ms'][n]:.1f}", f"**{r['variants'][n]:.2f}**" if n == "jr1" else f"{r['variants'][n]:.2f}"]
            else:
                cells += ["—", "—"]
        rows.append(f"| `{n}` — {VARIANTS[n][3]} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--model", default="lenet", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--render", nargs="+", metavar="JSON", help="print the README table from --json outputs")
    args = ap.parse_args(argv)
    if args.render:
        print(render([json.loads(open(p).read()) for p in args.render]))
        return
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)

    def progress(r, n):
        print(f"\rround {r}/{n}", end="", file=sys.stderr, flush=True)

    res = measure(args.device, args.model, args.batch, args.rounds, names, progress=None if args.json else progress)
    if args.json:
        print(json.dumps(res))
        return
    print(f"\n{MODELS[args.model][0]} on {res['device']}, batch {res['batch']}, torch {res['torch']}, "
          f"{res['threads']} thread(s), medians of {res['rounds']} interleaved rounds; auto = {res['auto_estimator']}")
    print(f"  {'variant':<16} {'ms/step':>10} {'× plain':>8}")
    for n, r in res["variants"].items():
        print(f"  {n:<16} {res['ms'][n]:>10.2f} {r:>8.2f}")


if __name__ == "__main__":
    main()
