"""A synthetic run directory for trying out reports and the gate without running an audit.

The numbers are made up (seeded), shaped like a LeNet'/MNIST audit; ``meta`` says
``synthetic: true`` so that nobody mistakes them for measurements. Used by
``scripts/check_report_renders.sh`` and by the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.store import ResultStore

# per search: (median L2 of the undefended model, log-normal spread, fraction not fooled)
_SEARCHES = {
    "noise": (7.0, 0.35, 0.10),
    "fgsm": (3.2, 0.35, 0.02),
    "pgd": (2.2, 0.30, 0.01),
    "cw": (1.35, 0.30, 0.0),
    "deepfool": (1.55, 0.30, 0.0),
    "jsma": (2.6, 0.30, 0.03),
}


def write_demo_run(run_dir: str | Path, models=(("lenet-mnist", 1.0, 0.990, 25.0), ("lenet-mnist-jr", 1.6, 0.986, 6.0)),
                   n: int = 300, seed: int = 0, searches=tuple(_SEARCHES)) -> Path:
    """``models``: (name, robustness scale, clean accuracy, mean ‖J‖_F) per checkpoint."""
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    x_norm = rng.normal(9.3, 1.6, size=n).clip(4.0, 16.0)  # ‖x‖₂ of MNIST digits in [0,1]
    labels = rng.integers(0, 10, size=n)
    with ResultStore(run_dir) as st:
        st.set_meta("synthetic", True)
        st.set_meta("seed", seed)
        st.set_meta("dataset", "mnist (synthetic demo numbers)")
        for name, scale, acc, jnorm in models:
            wrong = rng.random(n) > acc
            st.put_model(name, f"demo:{name}", {"architecture": "lenet", "dataset": "mnist", "input_shape": [1, 28, 28]},
                         clean_accuracy=float(1 - wrong.mean()), jacobian_norm=jnorm, n=n)
            z = rng.normal(size=n)  # shared per-sample hardness across searches
            for s in searches:
                med, spread, nf = _SEARCHES[s]
                l2 = med * scale * np.exp(spread * (0.8 * z + 0.6 * rng.normal(size=n)))
                not_fooled = rng.random(n) < nf * (1.5 if scale > 1 else 1.0)
                l2 = np.where(not_fooled, np.inf, l2)
                l2 = np.where(wrong, 0.0, l2)
                fooled = np.isfinite(l2)  # clean errors count as fooled (d = 0)
                if s == "jsma":
                    l0 = np.where(np.isfinite(l2), np.round(l2 * 11 + rng.integers(0, 5, n)), np.inf)
                else:
                    l0 = np.where(np.isfinite(l2), np.minimum(784, np.round(l2 * 40 + 100)), np.inf)
                linf = np.where(np.isfinite(l2), np.minimum(1.0, l2 / (np.sqrt(784) if s in ("fgsm", "pgd") else 4.0)),
                                np.inf)
                l0 = np.where(wrong, 0.0, l0)
                linf = np.where(wrong, 0.0, linf)
                preds = np.where(wrong, (labels + 1) % 10, labels)
                rows = [dict(sample_id=i, label=int(labels[i]), clean_pred=int(preds[i]),
                             adv_pred=int(preds[i]) if wrong[i] else int((labels[i] + 3) % 10) if fooled[i] else None, fooled=bool(fooled[i]),
                             l2=float(l2[i]), linf=float(linf[i]), l0=float(l0[i]), x_norm=float(x_norm[i]),
                             n_forward=10, n_grad=10) for i in range(n)]
                st.put_batch(name, s, "0", rows)
            sig = np.round(np.linspace(0.0, 1.0, 11), 3)
            accs = acc / (1 + np.exp((sig - 0.45 * scale) / 0.08))
            accs = accs * acc / accs[0]
            st.put_noise_accuracy(name, [(float(s_), float(a), n) for s_, a in zip(sig, accs)])
    return run_dir
