"""`jr-eval`: audit checkpoints with the six fooling-distance searches.

`jr-eval` with no arguments audits the bundled checkpoints on the bundled MNIST
slice; `jr-eval run CHECKPOINT...` audits any checkpoints. Progress, warnings and
errors go to stderr; the final table (or, with `--json`, one JSON document) to stdout.
"""

from __future__ import annotations

import json
import math
from typing import Optional

import click
import torch
from rich.table import Table

from ..config import build_config, given, read_yaml
from ..errors import ConfigError
from ..evaluation.audit import ALL_SEARCHES, AuditConfig, json_document, run_audit
from ..evaluation.jnorm import JACOBIAN_MODES
from ..evaluation.jnorm import describe as jnorm_describe
from ..evaluation.metrics import SAMPLES_NOTE
from ..runtime import env_rank
from . import report_cmds
from .common import ARCH_HELP, JRGroup, config_option, console, handle_errors, model_data_options
from .progress import RichEvents
from .common import out as _stdout

_DEFAULTS = AuditConfig()

MAIN_HELP = f"""Audit classifiers for adversarial robustness (fooling distances, ρ̂_adv, ‖J‖_F).

\b
With no command, audits the bundled checkpoints (lenet-mnist, lenet-mnist-jr) on the
bundled MNIST slice with all six searches, N={_DEFAULTS.n} samples and the quick search
budget (cheaper CW and JSMA; under 3 minutes on 2 CPU cores); same as `jr-eval run`.
"""


def _fmt(v: Optional[float], spec: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _jacobian_line(m: dict) -> str:
    """‖J‖_F of the audit in both spaces with N and the method, the card's beside it."""
    j = m.get("jacobian") or ({"method": "exact", "pixel": m.get("jacobian_norm"), "n": None}
                              if m.get("jacobian_norm") is not None else None)
    parts = [f"mean ‖J‖_F {jnorm_describe(j, 'pixel')}"]
    if j and j.get("normalized") is not None:
        parts.append(jnorm_describe(j, "normalized"))
    card = (j or {}).get("card")
    if card:
        cp = [jnorm_describe(card, sp) for sp in ("pixel", "normalized") if card.get(sp) is not None]
        parts.append("card (whole test set): " + ", ".join(cp))
    return "; ".join(parts)


def render_tables(summary: dict, con=None) -> None:
    """One rich table per model (its searches as rows, the best known distance last), on stdout."""
    con = con or _stdout
    con.print(f"[bold]audit[/] {summary['run_dir']}", highlight=False)
    for m in summary["models"]:
        t = Table(title=f"[bold]{m['name']}[/]  clean acc {_fmt(m['clean_accuracy'], '.2%')}"
                        + (f"  [dim]{m['checkpoint']}[/]" if m["checkpoint"] != m["name"] else "")
                        + f"\n{_jacobian_line(m)}",
                  title_justify="left")
        for col in ("search", "n", "success", "median L2", "mean L2", "ρ̂_adv", "not fooled", "protocol"):
            t.add_column(col, justify="left" if col in ("search", "protocol") else "right",
                         no_wrap=col != "protocol")
        for s, r in m["searches"].items():
            t.add_row(s, str(r["n"]), _fmt(r["success_rate"], ".1%"), _fmt(r["median_l2"]), _fmt(r["mean_l2"]),
                      _fmt(r["rho_adv"]), str(r["not_fooled"]), r.get("protocol") or "")
        b = m.get("best")
        if b is not None:
            t.add_section()
            found = ", ".join(f"{k} {v}" for k, v in b["found_by"].items())
            t.add_row("[bold]best[/]", str(b["n"]), _fmt(b["success_rate"], ".1%"), _fmt(b["median_l2"]),
                      _fmt(b["mean_l2"]), f"[bold]{_fmt(b['rho_adv'])}[/]", str(b["not_fooled"]),
                      f"per-sample minimum over the searches (found by {found})")
        con.print(t)
    con.print(f"[dim]{SAMPLES_NOTE}[/]", highlight=False)
    if summary.get("warnings"):
        console.print(f"[yellow]{len(summary['warnings'])} warning(s)[/], stored in the run's meta 'warnings'")


@click.group(cls=JRGroup, invoke_without_command=True, help=MAIN_HELP)
@click.version_option(package_name="robustbench-jr")
@click.pass_context
def main(ctx: click.Context) -> None:
    if ctx.invoked_subcommand is None:
        ctx.invoke(run)


@main.command(help=f"""Audit CHECKPOINT... (directories, .safetensors/.pt files or bundled names).

CHECKPOINT is a bundled name, a checkpoint directory (model.safetensors + card.yaml),
bare weights (.safetensors, a .pt/.pth state dict) with --arch, a TorchScript or
torch.export (.pt2) archive, or timm:NAME / torchvision:NAME for the library's
pretrained weights. --arch, --arch-kwargs, --num-classes, --mean/--std and
--input-size apply to checkpoints without a card; --dataset may be your own data.

\b
Without CHECKPOINT: the bundled checkpoints on the bundled MNIST slice with
--budget quick (the demo audit, under 3 minutes on 2 CPU cores).
For every model × search × sample one row goes to OUT/results.sqlite, committed
per batch; rerunning the same command on the same OUT resumes. A command that adds
searches (--attacks) or checkpoints to the run in OUT extends it: its rows are kept,
only the new model × search work runs; an OUT whose run differs in anything they share
(data, N, seed, a search's config, a model's weights) is refused. Defaults: N={_DEFAULTS.n}, all six
searches with the paper protocols (--budget paper; per-search overrides in --config under
`searches:`, e.g. `searches: {{cw: {{max_iterations: 500}}}}`), PGD saturation from the
dataset (32/255 MNIST-like, 16/255 CIFAR-like), OUT = runs/audit-<config hash>.
Exit status: 0 when the audit completed, 2 on bad input.""")
@click.argument("checkpoints", nargs=-1)
@click.option("--attacks", default=None, metavar="all|LIST",
              help=f"'all' or a comma-separated list of: {', '.join(ALL_SEARCHES)}.  [default: all]")
@click.option("--budget", type=click.Choice(["paper", "quick"]), default=None,
              help="paper: the searches' paper protocols; quick: CW with 5 binary-search steps × 100 "
                   "iterations (Adam lr 0.02) and JSMA over the 2 most likely targets.  "
                   "[default: quick without CHECKPOINT, else paper]")
@click.option("--n", "n", type=int, default=None, help=f"Number of test samples.  [default: {_DEFAULTS.n}]")
@click.option("--subset", type=click.Choice(["first", "random"]), default=None,
              help="The first N test samples or N random ones (drawn with --seed).  [default: first]")
@click.option("--dataset", default=None,
              help="Dataset to audit on: a registered name, or your data as folder:PATH (ImageFolder layout), "
                   "npz:PATH or safetensors:PATH (arrays images, labels).  [default: each checkpoint card's]")
@click.option("--arch", default=None, help=ARCH_HELP)
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Where to look for the data.")
@click.option("--download/--no-download", default=None,
              help="Let torchvision download a missing dataset (MNIST, Fashion-MNIST, CIFAR-10/100) into "
                   "--data-root (needs the network).  [default: no-download]")
@click.option("--source", type=click.Choice(["auto", "bundled", "local"]), default=None,
              help="auto: local files, or for MNIST with N ≤ 1000 the bundled slice when the full test set "
                   "is missing; bundled: the bundled MNIST slice; local: local files only.  "
                   "[default: bundled without CHECKPOINT, else auto]")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Run directory (results.sqlite, config.yaml). Holding a run already: resumed, or extended "
                   "with the searches and checkpoints this command adds when everything they share is unchanged "
                   "(else refused, with the differences).  [default: runs/audit-<config hash>]")
@config_option
@click.option("--seed", type=int, default=None, help="Seed of all random draws.  [default: 0]")
@click.option("--device", default=None, help="auto (CUDA when present), cpu, cuda or cuda:N.  [default: auto]")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (torch.set_num_threads).  [default: torch's default; 1 without "
                   "CHECKPOINT: small models such as LeNet run faster single-threaded, most of all on a "
                   "shared machine]")
@click.option("--batch-size", type=int, default=None, help=f"Samples per batch.  [default: {_DEFAULTS.batch_size}]")
@click.option("--jacobian", type=click.Choice(list(JACOBIAN_MODES)), default=None,
              help="Mean ‖J‖_F: exact (one backward pass per class), estimate (random projections, with a "
                   "standard error), off; auto = exact where classes × input size ≤ 10⁶ (MNIST, CIFAR), "
                   "else estimate.  [default: auto]")
@click.option("--save-adversarials/--no-save-adversarials", default=None,
              help="Write adversarial images to OUT/adversarials/<model>/<search>/batch-XXXX.safetensors.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout (progress on stderr).")
@click.option("--quiet", is_flag=True, help="No progress bars and no table.")
@model_data_options()
@handle_errors
def run(checkpoints, attacks, budget, n, subset, dataset, arch, data_root, download, source, out_dir, config_file, seed,
        device, threads, batch_size, jacobian, save_adversarials, as_json, quiet, model_opts) -> None:
    file_layer = read_yaml(config_file) if config_file else {}
    file_ckpts = file_layer.pop("checkpoints", None)
    if file_ckpts is not None and not (isinstance(file_ckpts, list) and all(isinstance(c, str) for c in file_ckpts)):
        raise ConfigError(f"config file {config_file!r}: 'checkpoints' must be a list of paths or names")
    ckpts = list(checkpoints) or list(file_ckpts or [])
    # options the user did not type are None: "not given", dropped (an explicit null is a YAML/API value)
    cli_layer = given(dict(attacks=attacks, budget=budget, n=n, subset=subset, dataset=dataset, arch=arch,
                           data_root=data_root, download=download, source=source,
                           seed=seed, device=device, batch_size=batch_size, jacobian=jacobian,
                           save_adversarials=save_adversarials))
    cli_layer.update(model_opts)
    defaults = {} if ckpts else {"source": "bundled", "budget": "quick"}
    where = f"config file {config_file!r}" if config_file else "options"
    cfg = build_config(AuditConfig, defaults, file_layer, cli_layer, where=where)
    if threads is None and not ckpts:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)
    main_rank = env_rank() in (None, 0)  # under torchrun, rank 0 alone shows progress and results
    with RichEvents(console, enabled=not quiet and main_rank) as on_event:
        summary = run_audit(ckpts, cfg, out_dir, on_event=on_event if main_rank else None)
    if summary is None:
        return
    if as_json:
        click.echo(json.dumps(json_document(summary), indent=2))
    elif not quiet:
        render_tables(summary)


report_cmds.register(main)
main.context_settings.update(help_option_names=["-h", "--help"], max_content_width=100)

if __name__ == "__main__":
    main()
