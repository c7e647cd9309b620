"""Host-device synchronisation points per iteration of the iterative searches (not a test).

On CUDA every operation that needs a tensor's value on the host — ``bool(t)``, ``t.item()``,
``t.tolist()``, ``nonzero``, indexing with a boolean mask — waits for the device to finish.
``torch.cuda.set_sync_debug_mode`` reports them on a GPU; this script counts the same
operations on any device by intercepting them with a ``TorchFunctionMode`` while a search
runs, and divides by the search's iterations (the gradient passes of its largest row
count, i.e. the iterations the batch loop made). CPU runs count the points where a CUDA
run would synchronise; the count does not depend on the device.

    python benchmarks/bench_syncs.py                            # cw (paper, quick), pgd, ddn (paper, quick), deepfool
    python benchmarks/bench_syncs.py --ref HEAD~3               # also the searches as they were at a commit
    python benchmarks/bench_syncs.py --device cuda              # the same count, on a GPU

``--ref REV`` imports ``robustbench_jr`` from ``git worktree``'s checkout of REV (a temporary
directory) in a subprocess, so before/after counts come from one command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

#: (label, search, config) of the iterative searches
CASES = [
    ("cw (paper)", "cw", {}),
    ("cw (quick)", "cw", "quick"),
    ("pgd", "pgd", {}),
    ("ddn (paper)", "ddn", {}),
    ("ddn (quick)", "ddn", "quick"),
    ("deepfool", "deepfool", {}),
]


def _is_bool_index(idx) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class SyncCounter(TorchFunctionMode):
    """Counts the tensor operations that copy a value to the host."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in ("__bool__", "item", "tolist", "nonzero", "__int__", "__float__", "any_sync"):
            self.counts[name] += 1
        elif name == "argwhere" or (name in ("__getitem__", "__setitem__") and len(args) > 1
                                    and _is_bool_index(args[1])):
            self.counts[f"{name}[bool mask]"] += 1
        return func(*args, **kwargs)


def count(device: str, n: int, checkpoint: str) -> dict:
    from robustbench_jr.attacks import build_search
    from robustbench_jr.data import bundled_mnist
    from robustbench_jr.evaluation.plan import BUDGETS
    from robustbench_jr.models import load_checkpoint

    torch.set_num_threads(1)
    ds = bundled_mnist()
    x, y = ds.pixels(device=device)[:n], ds.labels[:n].to(device)
    model, _ = load_checkpoint(checkpoint, device=torch.device(device))
    model.eval()
    out = {}
    for label, name, cfg in CASES:
        if cfg == "quick":
            cfg = dict(BUDGETS["quick"].get(name, {}))
        search = build_search(name, cfg)
        with SyncCounter() as sc:
            r = search.run(model, x, y, seed=0)
        iters = int(r.n_grad.max())
        if name == "deepfool":  # one backward pass per class and iteration
            iters = max(1, iters // int(model(x[:1]).shape[1]))
        total = sum(sc.counts.values())
        out[label] = {"syncs": total, "iterations": iters, "per_iteration": round(total / max(iters, 1), 3),
                      "by_kind": dict(sc.counts)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=32, help="first n bundled MNIST images (one batch)")
    ap.add_argument("--checkpoint", default="lenet-mnist")
    ap.add_argument("--ref", default="", help="also count at this git revision")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(count(args.device, args.n, args.checkpoint)))
        return 0
    results = {"this tree": count(args.device, args.n, args.checkpoint)}
    if args.ref:
        root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                              check=True).stdout.strip()
        with tempfile.TemporaryDirectory() as tmp:
            wt = os.path.join(tmp, "ref")
            subprocess.run(["git", "-C", root, "worktree", "add", "--detach", wt, args.ref], check=True,
                           capture_output=True)
            try:
                env = dict(os.environ, PYTHONPATH=wt)
                res = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", "--device", args.device,
                                      "--n", str(args.n), "--checkpoint", args.checkpoint], env=env,
                                     capture_output=True, text=True, check=True, cwd=tmp)
                results[args.ref] = json.loads(res.stdout.strip().splitlines()[-1])
            finally:
                subprocess.run(["git", "-C", root, "worktree", "remove", "--force", wt], capture_output=True)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    cols = list(results)
    print(f"host-device sync points per iteration ({args.checkpoint}, {args.n} images, one batch, {args.device})")
    print(f"| search | {' | '.join(cols)} |")
    print("|---|" + "---:|" * len(cols))
    for label, *_ in CASES:
        cells = [f"{results[c][label]['per_iteration']:.2f} ({results[c][label]['syncs']} / "
                 f"{results[c][label]['iterations']})" for c in cols]
        print(f"| {label} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
