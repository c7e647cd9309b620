"""Our fooling-distance searches vs foolbox 3 counterparts, same model, same process.

On the bundled LeNet' checkpoints and the first ``--n`` bundled MNIST test images, each
search is run by us and by foolbox on the *same* model object (foolbox wraps it as
``PyTorchModel(model.eval(), bounds=(0, 1))``; the model normalises inside). Printed
per search: wall time ours / foolbox, the ratio of median L2 fooling distances on the
samples both fooled, both success rates, gradient passes per image; JSMA (foolbox 3
has none for PyTorch) alone with its peak memory. Then a PASS/FAIL line per target:

* CW and DeepFool: median distance ≤ 1.00× foolbox's with success ≥ foolbox's;
* CW and DeepFool: time ≤ 0.5× foolbox's;
* FGSM: exactly one gradient per image.

Counterparts and how a distance is obtained from foolbox:

* minimisation attacks (L2CarliniWagnerAttack, L2DeepFoolAttack): ``attack.run`` gives
  one point per sample; its L2 distance and its success are computed here with a fresh
  forward pass (criterion: misclassification). A returned all-zero image (foolbox CW's
  placeholder when it found nothing) counts as a failure.
* fixed-ε attacks (LinfFastGradientAttack = FGSM, LinfPGD, L2AdditiveGaussianNoiseAttack):
  run over an ε grid (the whole grid is timed: that is what a user must run to get a
  minimum distance with foolbox); per sample the smallest grid ε whose clipped output
  fools the model (fresh forward pass) gives the adversarial, whose L2 distance is
  reported. Those distances are quantised by the grid.

Distances and success rates are over the samples the model classifies correctly (the
others have distance 0 for both). One CPU thread by default (``--threads``): the
benchmark machine is shared.

    python benchmarks/bench_attacks.py [--n 256] [--checkpoints lenet-mnist,lenet-mnist-jr]
        [--searches noise,fgsm,pgd,cw,deepfool,jsma] [--device cpu|cuda|all]
        [--batch-size N] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from robustbench_jr.attacks import SearchResult, build_search
from robustbench_jr.data import bundled_mnist
from robustbench_jr.models import load_checkpoint

ALL_SEARCHES = ("noise", "fgsm", "pgd", "cw", "deepfool", "jsma")
ALL_CHECKPOINTS = ("lenet-mnist", "lenet-mnist-jr")
#: relative tolerance for "≤ 1.00×" and "closer": distances come from float32 images, so equal
#: algorithms (e.g. both DeepFools) agree only to ~1e-7 relative
REL_TOL = 1e-4

# foolbox settings matched to ours (see the module docstring)
FB_CW = dict(binary_search_steps=10, steps=1000, stepsize=0.005, confidence=0, initial_const=0.01, abort_early=True)
FB_DEEPFOOL = dict(steps=50, candidates=10, overshoot=0.02)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable, device: torch.device):
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0


def _batches(n: int, bs: int):
    for s in range(0, n, bs):
        yield slice(s, min(n, s + bs))


def _l2(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (adv.double() - x.double()).flatten(1).norm(dim=1).cpu()


@torch.no_grad()
def _fooled(model, adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fresh eval-mode forward pass: finite, in [0, 1] and classified ≠ y."""
    flat = adv.flatten(1)
    valid = torch.isfinite(flat).all(1) & (flat >= 0).all(1) & (flat <= 1).all(1)
    pred = model(torch.nan_to_num(adv)).argmax(1)
    return (valid & (pred != y)).cpu()


def _rss_kib(field_name: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _median(t: torch.Tensor) -> float:
    return float(t.median()) if t.numel() else float("nan")


@dataclass
class Row:
    search: str
    t_ours: float
    t_fb: Optional[float]
    ours_l2: torch.Tensor              # [n] float64, +inf = not fooled
    ours_fooled: torch.Tensor          # [n] bool
    fb_l2: Optional[torch.Tensor] = None
    fb_fooled: Optional[torch.Tensor] = None
    grads_ours: Optional[float] = None  # per attackable image (mean)
    grads_ours_max: Optional[int] = None
    grads_fb: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------
def run_ours(name: str, config: dict, model, x, y, ids, bs: int, seed: int, device) -> tuple[SearchResult, float]:
    search = build_search(name, config)

    def go():
        parts = [search.run(model, x[s], y[s], seed=seed, sample_ids=ids[s]) for s in _batches(len(x), bs)]
        return SearchResult.concat(parts)

    return _timed(go, device)


# ---------------------------------------------------------------------------------------------
# foolbox
# ---------------------------------------------------------------------------------------------
def fb_minimisation(attack, fmodel, model, x, y, bs, device):
    import foolbox as fb

    def go():
        outs = []
        for s in _batches(len(x), bs):
            outs.append(attack.run(fmodel, x[s], fb.criteria.Misclassification(y[s])))
        return torch.cat(outs)

    adv, t = _timed(go, device)
    fooled = _fooled(model, adv, y)
    zero_img = ((adv.flatten(1) == 0).all(1) & ~(x.flatten(1) == 0).all(1)).cpu()
    fooled &= ~zero_img
    l2 = torch.where(fooled, _l2(adv, x), torch.tensor(float("inf"), dtype=torch.float64))
    return l2, fooled, t, int(zero_img.sum())


def fb_grid(attack, fmodel, model, x, y, grid, bs, device):
    """Whole ε grid timed; per sample the smallest fooling ε (fresh forward) → its L2."""
    import foolbox as fb

    def go():
        per_batch = []
        for s in _batches(len(x), bs):
            _, clipped, _ = attack(fmodel, x[s], fb.criteria.Misclassification(y[s]), epsilons=list(grid))
            per_batch.append(clipped)
        return per_batch

    per_batch, t = _timed(go, device)
    n = len(x)
    l2 = torch.full((n,), float("inf"), dtype=torch.float64)
    linf = torch.full((n,), float("inf"), dtype=torch.float64)
    first = torch.full((n,), -1, dtype=torch.int64)
    for (s, clipped) in zip(_batches(n, bs), per_batch):
        for k, adv in enumerate(clipped):           # increasing ε
            f = _fooled(model, adv, y[s])
            rows = torch.arange(s.start, s.stop)
            new = f & (first[rows] < 0)
            if bool(new.any()):
                r = rows[new]
                first[r] = k
                d = (adv.double() - x[s].double()).flatten(1).cpu()[new]
                l2[r] = d.norm(dim=1)
                linf[r] = d.abs().amax(1)
    return l2, first >= 0, t, linf


class GradCounter:
    """Counts images that went through a backward pass of ``model`` (full backward hook)."""

    def __init__(self, model):
        self.rows = 0
        self.h = model.register_full_backward_hook(self._hook)

    def _hook(self, module, grad_input, grad_output):
        self.rows += int(grad_output[0].shape[0])

    def remove(self):
        self.h.remove()


# ---------------------------------------------------------------------------------------------
# one checkpoint on one device
# ---------------------------------------------------------------------------------------------
def bench_checkpoint(ckpt: str, device: torch.device, args) -> dict:
    import foolbox as fb

    model, card = load_checkpoint(ckpt, device=device)
    model = model.eval()
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    ds = bundled_mnist()
    n = min(args.n, len(ds))
    x = ds.pixels(device=device)[:n].contiguous()
    y = ds.labels[:n].to(device)
    ids = ds.ids[:n]
    bs = args.batch_size or n
    with torch.no_grad():
        clean_ok = (model(x).argmax(1) == y).cpu()
    n_ok = int(clean_ok.sum())
    # warm-up (first backward allocates buffers)
    xw = x[:2].clone().requires_grad_(True)
    model(xw).sum().backward()
    # and one small untimed DeepFool per library (exercises the autograd paths both use)
    build_search("deepfool", {}).run(model, x[:4], y[:4])
    fb.attacks.L2DeepFoolAttack(**FB_DEEPFOOL).run(fmodel, x[:4], fb.criteria.Misclassification(y[:4]))
    model.zero_grad(set_to_none=True)
    searches = args.searches
    rows: list[Row] = []
    jsma_info = None
    cw_opts = None

    def ours_row(label, name, cfg):
        res, t = run_ours(name, cfg, model, x, y, ids, bs, args.seed, device)
        fooled = res.fooled.cpu() & clean_ok
        l2 = torch.where(fooled, res.l2.cpu(), torch.tensor(float("inf"), dtype=torch.float64))
        g = res.n_grad.cpu()[clean_ok]
        return res, Row(label, t, None, l2, fooled, grads_ours=float(g.double().mean()) if g.numel() else 0.0,
                        grads_ours_max=int(g.max()) if g.numel() else 0)

    torch.manual_seed(args.seed)
    if "noise" in searches:
        _, row = ours_row("noise", "noise", {})
        grid = np.geomspace(0.05, 100.0, args.grid).tolist()
        torch.manual_seed(args.seed)
        l2, f, t, _ = fb_grid(fb.attacks.L2AdditiveGaussianNoiseAttack(), fmodel, model, x, y, grid, bs, device)
        row.t_fb, row.fb_l2, row.fb_fooled = t, l2, f & clean_ok
        row.grads_fb = 0.0
        row.note = f"fb: L2 Gaussian noise, {len(grid)}-pt geometric ε grid 0.05..100 (new direction per ε)"
        rows.append(row)
    if "fgsm" in searches:
        _, row = ours_row("fgsm", "fgsm", {})
        grid = np.geomspace(1e-3, 1.0, args.grid).tolist()
        counter = GradCounter(model)
        try:
            l2, f, t, _ = fb_grid(fb.attacks.LinfFastGradientAttack(random_start=False), fmodel, model, x, y, grid,
                                  bs, device)
        finally:
            counter.remove()
        row.t_fb, row.fb_l2, row.fb_fooled = t, l2, f & clean_ok
        row.grads_fb = counter.rows / n
        row.note = f"fb: LinfFastGradientAttack, {len(grid)}-pt geometric ε grid 1e-3..1"
        rows.append(row)
    if "pgd" in searches:
        _, row = ours_row("pgd", "pgd", {})
        sat = 32.0 / 255.0
        grid = np.linspace(sat / args.pgd_grid, sat, args.pgd_grid).tolist()
        attack = fb.attacks.LinfPGD(abs_stepsize=1.0 / 255.0, steps=args.pgd_steps, random_start=False)
        l2, f, t, _ = fb_grid(attack, fmodel, model, x, y, grid, bs, device)
        row.t_fb, row.fb_l2, row.fb_fooled = t, l2, f & clean_ok
        row.grads_fb = float(len(grid) * args.pgd_steps)
        row.note = (f"fb: LinfPGD(abs_stepsize=1/255, steps={args.pgd_steps}, random_start=False), "
                    f"{len(grid)}-pt linear ε grid up to 32/255; fb returns the last iterate, ours the first fooling one")
        rows.append(row)
    if "cw" in searches:
        res, row = ours_row("cw", "cw", {})
        cw_opts = build_search("cw", {}).config_dict()
        l2, f, t, zeros = fb_minimisation(fb.attacks.L2CarliniWagnerAttack(**FB_CW), fmodel, model, x, y, bs, device)
        row.t_fb, row.fb_l2, row.fb_fooled = t, l2, f & clean_ok
        row.note = f"fb returned the all-zero placeholder for {zeros} sample(s) (counted as failures)"
        rows.append(row)
    if "deepfool" in searches:
        _, row = ours_row("deepfool", "deepfool", {})
        _, row_raw = ours_row("deepfool refine=False", "deepfool", {"refine": False})
        l2, f, t, zeros = fb_minimisation(fb.attacks.L2DeepFoolAttack(**FB_DEEPFOOL), fmodel, model, x, y, bs,
                                          device)
        for r in (row, row_raw):
            r.t_fb, r.fb_l2, r.fb_fooled = t, l2, f & clean_ok
        rows += [row, row_raw]
    if "jsma" in searches:
        fb_names = [a for a in dir(fb.attacks) if "saliency" in a.lower() or "jsma" in a.lower()]
        mem: dict = {}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        rss0 = _rss_kib("VmRSS")
        hwm_reset = _reset_peak_rss()
        maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        res, row = ours_row("jsma", "jsma", {})
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        mem["tracemalloc_peak_MiB"] = py_peak / 2**20
        if device.type == "cuda":
            mem["cuda_peak_delta_MiB"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        hwm = _rss_kib("VmHWM")
        if hwm_reset and hwm is not None and rss0 is not None:
            mem["rss_peak_delta_MiB"] = (hwm - rss0) / 1024
            mem["rss_method"] = "VmHWM after resetting it via /proc/self/clear_refs, minus VmRSS before"
        else:
            mem["rss_peak_delta_MiB"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss0) / 1024
            mem["rss_method"] = "ru_maxrss delta (0 if the earlier process peak was higher)"
        fooled = row.ours_fooled
        l0 = res.l0.cpu()[fooled]
        jsma_info = dict(time_s=row.t_ours, success=float(fooled.sum()) / max(1, n_ok), n_fooled=int(fooled.sum()),
                         median_l0=_median(l0), median_l2=_median(row.ours_l2[fooled]),
                         grads_per_image=row.grads_ours, foolbox_counterpart=fb_names or None, memory=mem,
                         config=build_search("jsma", {}).config_dict())

    return dict(checkpoint=ckpt, device=str(device), n=n, n_clean_correct=n_ok, rows=rows, jsma=jsma_info,
                cw_options=cw_opts, ids=ids.tolist(), clean_ok=clean_ok.tolist())


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _f(v, spec=".3f", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def row_metrics(r: Row, n_ok: int) -> dict:
    m = dict(search=r.search, t_ours_s=r.t_ours, t_fb_s=r.t_fb, succ_ours=float(r.ours_fooled.sum()) / max(1, n_ok),
             n_fooled_ours=int(r.ours_fooled.sum()), grads_per_image_ours=r.grads_ours,
             grads_per_image_ours_max=r.grads_ours_max, grads_per_image_fb=r.grads_fb, note=r.note)
    if r.fb_fooled is not None:
        both = r.ours_fooled & r.fb_fooled
        d_o, d_f = r.ours_l2[both], r.fb_l2[both]
        m.update(t_ratio=r.t_ours / r.t_fb if r.t_fb else None,
                 succ_fb=float(r.fb_fooled.sum()) / max(1, n_ok), n_fooled_fb=int(r.fb_fooled.sum()),
                 n_both=int(both.sum()), median_ours=_median(d_o), median_fb=_median(d_f))
        m["median_ratio"] = m["median_ours"] / m["median_fb"] if both.any() and m["median_fb"] > 0 else None
        if both.any():
            pr = d_o / d_f.clamp_min(1e-12)
            m["median_per_sample_ratio"] = float(pr.median())
            m["n_ours_closer"] = int((d_o < d_f * (1 - REL_TOL)).sum())
            m["n_fb_closer"] = int((d_o > d_f * (1 + REL_TOL)).sum())
    return m


def print_report(res: dict, args) -> list[tuple[str, bool, str]]:
    n, n_ok = res["n"], res["n_clean_correct"]
    print()
    print(f"=== {res['checkpoint']} on {res['device']}: {n} images, {n_ok} classified correctly "
          f"(distances / success over those {n_ok}) ===")
    hdr = (f"{'search':<22}{'t_ours':>8}{'t_fb':>9}{'t o/f':>7} |{'both':>5}{'med_ours':>9}{'med_fb':>9}"
           f"{'d o/f':>7}{'o<f':>5}{'o>f':>5} |{'succ_o':>8}{'succ_f':>8} |{'grad/img o':>11}{'fb':>7}")
    print(hdr)
    print("-" * len(hdr))
    metrics = []
    for r in res["rows"]:
        m = row_metrics(r, n_ok)
        metrics.append(m)
        print(f"{m['search']:<22}{_f(m['t_ours_s'], '.2f'):>8}{_f(m['t_fb_s'], '.2f'):>9}"
              f"{_f(m.get('t_ratio'), '.2f'):>7} |{m.get('n_both', '-'):>5}{_f(m.get('median_ours'), '.4f'):>9}"
              f"{_f(m.get('median_fb'), '.4f'):>9}{_f(m.get('median_ratio'), '.4f'):>7}"
              f"{m.get('n_ours_closer', '-'):>5}{m.get('n_fb_closer', '-'):>5} |"
              f"{_f(100 * m['succ_ours'], '.1f'):>7}%{_f(100 * m['succ_fb'], '.1f') if 'succ_fb' in m else '-':>7}% |"
              f"{_f(m['grads_per_image_ours'], '.1f'):>11}{_f(m['grads_per_image_fb'], '.1f'):>7}")
    print("columns: times in s (wall, whole set); 'd o/f' = median L2 ours / median L2 foolbox over the 'both' "
          "samples (both fooled);\n         o<f / o>f = samples where ours / foolbox is closer by > 0.01%; "
          "grad/img = backward passes per attackable image (mean)")
    for r in res["rows"]:
        if r.note:
            print(f"  {r.search}: {r.note}")
    if any(r.search in ("noise", "fgsm", "pgd") for r in res["rows"]):
        print("  NOTE: foolbox distances for noise / fgsm / pgd come from an ε grid (smallest fooling grid ε, "
              "L2 of that adversarial): they are QUANTISED by the grid; the foolbox time is the whole grid.")
    if res.get("cw_options"):
        o = res["cw_options"]
        print(f"  cw ours: lr {o['lr']}, c0 {o['initial_const']}, {o['binary_search_steps']} binary steps, "
              f"{o['max_iterations']} its; options on: abort_early={o['abort_early']}, "
              f"abort_on_distance={o['abort_on_distance']}, warm_start={o['warm_start']}, "
              f"const_rtol={o['const_rtol']}, tanh_margin={o['tanh_margin']}, success_patience={o['success_patience']}")
        print(f"  cw foolbox: {FB_CW}")
    for r in res["rows"]:
        if r.search in ("cw", "deepfool", "deepfool refine=False") and r.fb_fooled is not None:
            both = r.ours_fooled & r.fb_fooled
            if not both.any():
                continue
            ratio = torch.where(both, r.ours_l2 / r.fb_l2.clamp_min(1e-12), torch.tensor(-1.0, dtype=torch.float64))
            order = ratio.argsort(descending=True)[:3]
            worst = ", ".join(f"id {res['ids'][int(i)]}: {float(r.ours_l2[i]):.4f} vs {float(r.fb_l2[i]):.4f}"
                              for i in order if ratio[i] > 1 + REL_TOL)
            if worst:
                print(f"  {r.search}: largest ours/foolbox distance ratios: {worst}")
            only_fb = (r.fb_fooled & ~r.ours_fooled).nonzero().squeeze(1).tolist()
            only_o = (r.ours_fooled & ~r.fb_fooled).nonzero().squeeze(1).tolist()
            if only_fb or only_o:
                print(f"  {r.search}: fooled only by foolbox: ids {[res['ids'][i] for i in only_fb]}; "
                      f"only by ours: ids {[res['ids'][i] for i in only_o]}")
    by_row = {r.search: r for r in res["rows"]}
    if "deepfool" in by_row and "deepfool refine=False" in by_row:
        a, b = by_row["deepfool"], by_row["deepfool refine=False"]
        both = a.ours_fooled & b.ours_fooled
        shrunk = both & (a.ours_l2 < b.ours_l2 * (1 - REL_TOL))
        rel = (1 - a.ours_l2[shrunk] / b.ours_l2[shrunk]) if shrunk.any() else torch.zeros(0)
        print(f"  deepfool refine: shortened the raw DeepFool distance by > 0.01% on {int(shrunk.sum())} of "
              f"{int(both.sum())} samples (median shortening there {_f(100 * _median(rel), '.2f')}%); "
              f"time refine / raw {a.t_ours / b.t_ours:.2f}")
    j = res.get("jsma")
    if j:
        mem = j["memory"]
        print(f"  jsma (ours only; foolbox {fb_version()} counterpart: "
              f"{j['foolbox_counterpart'] or 'none — no saliency-map/JSMA attack in foolbox.attacks'}): "
              f"time {j['time_s']:.2f} s, success {100 * j['success']:.1f}% ({j['n_fooled']}/{n_ok}), "
              f"median L0 {_f(j['median_l0'], '.0f')}, median L2 {_f(j['median_l2'], '.4f')}, "
              f"{_f(j['grads_per_image'], '.1f')} backward passes/image")
        print(f"    peak memory: RSS +{mem['rss_peak_delta_MiB']:.1f} MiB ({mem['rss_method']}); "
              f"Python heap (tracemalloc, active during the run; torch tensor storage is not traced) "
              f"{mem['tracemalloc_peak_MiB']:.2f} MiB"
              + (f"; CUDA max_memory_allocated − allocated before: {mem['cuda_peak_delta_MiB']:.1f} MiB"
                 if "cuda_peak_delta_MiB" in mem else ""))
    res["metrics"] = metrics
    # targets
    verdicts = []
    tag = f"{res['checkpoint']}/{res['device']}"
    by = {m["search"]: m for m in metrics}
    for s in ("cw", "deepfool"):
        m = by.get(s)
        if not m or m.get("median_ratio") is None:
            continue
        ok = m["median_ratio"] <= 1.0 + REL_TOL and m["succ_ours"] >= m["succ_fb"]
        verdicts.append((f"{tag} {s}: median L2 ours/foolbox {m['median_ratio']:.4f} (≤ 1.00, rel. tol. {REL_TOL:g}) and success "
                         f"{100 * m['succ_ours']:.1f}% ≥ {100 * m['succ_fb']:.1f}%", ok, s))
        ok = m["t_ratio"] <= 0.5
        verdicts.append((f"{tag} {s}: time ours/foolbox {m['t_ratio']:.2f} (≤ 0.50)", ok, s))
    m = by.get("fgsm")
    if m:
        ok = m["grads_per_image_ours_max"] == 1 and m["grads_per_image_ours"] == 1.0
        verdicts.append((f"{tag} fgsm: gradients per image ours mean {m['grads_per_image_ours']:.2f}, max "
                         f"{m['grads_per_image_ours_max']} (must be 1); foolbox {m['grads_per_image_fb']:.1f} "
                         f"(one per ε value)", ok, "fgsm"))
    for text, ok, _ in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return verdicts


def fb_version() -> str:
    import foolbox
    return foolbox.__version__


def _jsonable(res: dict) -> dict:
    out = {k: v for k, v in res.items() if k != "rows"}
    out["per_sample"] = {}
    for r in res["rows"]:
        d = {"ours_l2": [None if not math.isfinite(v) else v for v in r.ours_l2.tolist()]}
        if r.fb_l2 is not None:
            d["fb_l2"] = [None if not math.isfinite(v) else v for v in r.fb_l2.tolist()]
        out["per_sample"][r.search] = d
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="number of bundled MNIST test images (first n)")
    ap.add_argument("--checkpoints", default="both", help="comma list of bundled checkpoints, or 'both'")
    ap.add_argument("--searches", default=",".join(ALL_SEARCHES), help="comma list of " + ",".join(ALL_SEARCHES))
    ap.add_argument("--device", default="all", help="cpu, cuda or all (cpu, plus cuda when present)")
    ap.add_argument("--batch-size", type=int, default=0, help="images per batch for both libraries (0 = all n)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: shared machine)")
    ap.add_argument("--grid", type=int, default=64, help="ε grid size for foolbox FGSM and Gaussian noise")
    ap.add_argument("--pgd-grid", type=int, default=32, help="ε grid size for foolbox LinfPGD (up to 32/255)")
    ap.add_argument("--pgd-steps", type=int, default=40, help="steps of foolbox LinfPGD per ε")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write results (metrics and per-sample distances) as JSON here")
    args = ap.parse_args()
    args.searches = [s.strip() for s in args.searches.split(",") if s.strip()]
    bad = [s for s in args.searches if s not in ALL_SEARCHES]
    if bad:
        ap.error(f"unknown search(es) {bad}; valid: {', '.join(ALL_SEARCHES)}")
    ckpts = list(ALL_CHECKPOINTS) if args.checkpoints == "both" else [c.strip() for c in args.checkpoints.split(",")]
    if args.device == "all":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available (use --device cpu or all)")
        devices = [args.device]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, foolbox {fb_version()}, python {platform.python_version()}, "
          f"{args.threads} CPU thread(s) (torch.set_num_threads; the machine is shared), "
          f"{os.cpu_count()} CPUs visible, devices: {', '.join(devices)}")
    all_results, verdicts = [], []
    for dev in devices:
        device = torch.device(dev)
        if device.type == "cuda":
            print(f"CUDA device: {torch.cuda.get_device_name(device)}")
        for ckpt in ckpts:
            t0 = time.perf_counter()
            res = bench_checkpoint(ckpt, device, args)
            verdicts += print_report(res, args)
            print(f"  (checkpoint wall time {time.perf_counter() - t0:.0f} s)")
            all_results.append(res)
    print()
    print(f"summary: {sum(ok for _, ok, _ in verdicts)} PASS, {sum(not ok for _, ok, _ in verdicts)} FAIL")
    if args.out:
        payload = dict(args=vars(args), torch=torch.__version__, foolbox=fb_version(),
                       results=[_jsonable(r) for r in all_results],
                       verdicts=[dict(text=t, passed=ok) for t, ok, _ in verdicts])
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1, default=float)
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
