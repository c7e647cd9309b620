"""Time one training step: plain vs JR (n_proj=1, 3) vs exact JR vs DataGrad.

Reported as ratios to the plain cross-entropy step measured in the same run, for LeNet'
(MNIST-sized input) and ResNet-18 (CIFAR-sized input), on random data. CPU always, CUDA
when a GPU is present. Each step is exactly what `jr-train` runs
(robustbench_jr.training.step_loss + backward + SGD update).

Reference (Hoffman et al. 2019, §2.3 and App. E, on a GPU): JR with n_proj=1 costs ≈1.3×
the plain step for LeNet' and ≈2× for ResNet-18.

    python benchmarks/bench_train_step.py [--device cpu|cuda|all] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from robustbench_jr.jacobian import build_regularizer
from robustbench_jr.models import make_model
from robustbench_jr.training import step_loss

VARIANTS = [
    ("plain", "none", {}, 0.0),
    ("JR n_proj=1", "jr", {"n_proj": 1}, 0.01),
    ("JR n_proj=3", "jr", {"n_proj": 3}, 0.01),
    ("JR exact", "jr-exact", {}, 0.01),
    ("DataGrad", "datagrad", {}, 0.01),
]
MODELS = [("LeNet'", "lenet", "mnist", (1, 28, 28)), ("ResNet-18", "resnet18-cifar", "cifar", (3, 32, 32))]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(arch, norm, shape, reg_name, opts, lam, device, batch, repeats, warmup=3):
    torch.manual_seed(0)
    model = make_model(arch, 10, norm, shape).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    reg = build_regularizer(reg_name, lam, **opts)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        loss, *_ = step_loss(model, reg, x, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu + cuda when present)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch-lenet", type=int, default=100)
    ap.add_argument("--batch-resnet", type=int, default=100)
    ap.add_argument("--models", default="lenet,resnet18-cifar")
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.device == "all" else [args.device]
    wanted = set(args.models.split(","))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for dev in devices:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        for label, arch, norm, shape in MODELS:
            if arch not in wanted:
                continue
            batch = args.batch_lenet if arch == "lenet" else args.batch_resnet
            repeats = args.repeats if (arch == "lenet" or device.type == "cuda") else max(3, args.repeats // 4)
            base = None
            print(f"\n{label} on {name}, batch {batch}, median of {repeats} steps")
            print(f"  {'variant':<14} {'ms/step':>10} {'× plain':>8}")
            for vlabel, reg, opts, lam in VARIANTS:
                t = time_step(arch, norm, shape, reg, opts, lam, device, batch, repeats)
                base = base or t
                print(f"  {vlabel:<14} {t * 1e3:>10.2f} {t / base:>8.2f}")


if __name__ == "__main__":
    main()
