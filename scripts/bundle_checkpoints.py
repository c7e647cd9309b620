"""Copy trained runs into the package as bundled checkpoints, with provenance notes.

    python scripts/bundle_checkpoints.py runs/lenet-mnist runs/lenet-mnist-jr

The runs come from `jr-train fit --config configs/<name>.yaml --out runs/<name>`; the
bundled name is the run directory's name. Only model.safetensors and card.yaml are
shipped; the card gains `name`, `config_file` and `notes` (how the run differs from the
paper's protocol).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "robustbench_jr" / "models" / "bundled"
PAPER_STEPS = 150_000


def bundle(run: Path) -> Path:
    name = run.name
    card = yaml.safe_load((run / "card.yaml").read_text())
    steps = card["training"]["steps_done"]
    notes = [
        f"Trained with `jr-train fit --config configs/{name}.yaml` on {card['training']['device']} "
        f"in {card['training']['wall_time_s'] / 60:.0f} min.",
        "metrics.jacobian_norm is the mean exact ‖J(x)‖_F over the full MNIST test set w.r.t. the "
        "[0,1] pixel input; jacobian_norm_normalized_input is the same w.r.t. the normalised input "
        "((x−0.1307)/0.3081), the space Hoffman et al. report in Table 1.",
    ]
    if steps < PAPER_STEPS:
        notes.append(
            f"Fewer steps than the paper: {steps:,} SGD steps instead of Hoffman et al.'s {PAPER_STEPS:,} "
            f"(CPU time); the schedule is compressed proportionally (lr ×{card['training']['lr_decay']} "
            f"every {card['training']['lr_step']:,} steps instead of every 50,000).")
    card = {"name": name, **card, "config_file": f"configs/{name}.yaml", "notes": notes}
    out = DEST / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.safetensors", out / "model.safetensors")
    (out / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=100))
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(bundle(Path(arg)))
