"""Scaling of an audit and of a JR training step over torchrun processes (not a test).

Runs the real commands — `jr-eval run` and `jr-train fit` — in one process and under
`torchrun --nproc_per_node=P` for every P given, each process with ``--threads`` torch
threads (CPU: gloo; with GPUs: one device per process), and reports the parallel
efficiency T(1) / (P · T(P)) measured in the same job:

* audit: wall time of the whole command (model loading, clean pass, ‖J‖_F, searches, merge);
  with ``--base-n N0`` also the *marginal* efficiency over the images N0+1 … N,
  (T₁(N) − T₁(N0)) / (P · (T_P(N) − T_P(N0))), in which the costs that do not grow with
  the audit (process and torchrun start-up, imports, merge, exit) cancel;
* training: seconds per step from ``metrics.jsonl`` between the first and last logged step
  (start-up and the final evaluation excluded).

    python benchmarks/bench_scaling.py                       # CPU, P = 1, 2
    python benchmarks/bench_scaling.py --procs 1,2,4,8 --device cuda
    python benchmarks/bench_scaling.py --json
    python benchmarks/bench_scaling.py --n 1000 --base-n 200 --batch-size 50 --no-train
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _cmd(script: str, args: list, procs: int) -> list:
    if procs == 1:
        return [str(BIN / script), *args]
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={procs}", "--", str(BIN / script), *args]


def _timed(cmd: list, env: dict) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return time.perf_counter() - t0


def bench_audit(procs: int, args, work: Path, n: int) -> float:
    out = work / f"audit-{procs}-{n}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _cmd("jr-eval", ["run", "lenet-mnist", "--source", "bundled", "--n", str(n), "--attacks", args.attacks,
                           "--budget", "quick", "--batch-size", str(args.batch_size), "--device", args.device,
                           "--quiet", "--out", str(out), "--threads", str(args.threads)], procs)
    return _timed(cmd, _env(args.threads))


def bench_train(procs: int, args, work: Path, data_root: Path) -> float:
    out = work / f"train-{procs}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = _cmd("jr-train", ["fit", "--model", "lenet", "--dataset", "mnist", "--data-root", str(data_root),
                            "--batch-size", "100", "--steps", str(args.steps), "--regularizer", "jr", "--lam", "0.01",
                            "--log-every", "10", "--eval-every", "0", "--save-every", str(args.steps),
                            "--eval-samples", "100", "--device", args.device, "--quiet", "--out", str(out)], procs)
    _timed(cmd, _env(args.threads))
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = recs[0], recs[-1]
    return (last["time"] - first["time"]) / (last["step"] - first["step"])


def _train_data(work: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers_data import fake_mnist_root  # the bundled real MNIST slice as a train/test split

    return fake_mnist_root(work / "data")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--procs", default="1,2", help="process counts, comma-separated (1 is the baseline)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--n", type=int, default=128, help="audited images")
    ap.add_argument("--attacks", default="cw,deepfool", help="searches of the audit")
    ap.add_argument("--base-n", type=int, default=0,
                    help="also audit this many images and report the marginal efficiency over the rest (0: off)")
    ap.add_argument("--batch-size", type=int, default=8, help="audit batch size")
    ap.add_argument("--no-train", action="store_true", help="only the audit")
    ap.add_argument("--steps", type=int, default=200, help="training steps")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    procs = sorted({1, *(int(p) for p in args.procs.split(","))})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data_root = _train_data(work)
        audit = {p: bench_audit(p, args, work, args.n) for p in procs}
        base = {p: bench_audit(p, args, work, args.base_n) for p in procs} if args.base_n else {}
        step = {} if args.no_train else {p: bench_train(p, args, work, data_root) for p in procs}
    result = {
        "device": args.device, "threads_per_process": args.threads,
        "audit": {"n": args.n, "attacks": args.attacks, "seconds": {str(p): round(t, 2) for p, t in audit.items()},
                  "efficiency": {str(p): round(audit[1] / (p * t), 3) for p, t in audit.items()}},
    }
    if base:
        extra = {p: audit[p] - base[p] for p in procs}
        result["audit"].update({
            "base_n": args.base_n, "base_seconds": {str(p): round(t, 2) for p, t in base.items()},
            "marginal_efficiency": {str(p): round(extra[1] / (p * t), 3) for p, t in extra.items()}})
    if step:
        result["train_jr_step"] = {"batch": 100, "seconds_per_step": {str(p): round(t, 5) for p, t in step.items()},
                                   "efficiency": {str(p): round(step[1] / (p * t), 3) for p, t in step.items()}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"device {args.device}, {args.threads} thread(s) per process")
    for p in procs:
        line = f"P={p}: audit {audit[p]:.1f} s (efficiency {result['audit']['efficiency'][str(p)]:.2f})"
        if base:
            line += (f", {args.base_n} images {base[p]:.1f} s (marginal efficiency "
                     f"{result['audit']['marginal_efficiency'][str(p)]:.2f})")
        if step:
            line += (f"; JR train step {step[p] * 1000:.1f} ms "
                     f"(efficiency {result['train_jr_step']['efficiency'][str(p)]:.2f})")
        print(line)


if __name__ == "__main__":
    main()
