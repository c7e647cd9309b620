"""Pieces shared by the click commands: error handling, consoles, common options."""

from __future__ import annotations

import functools
import os
import sys
import traceback

import click
import torch
import yaml
from rich.console import Console, ConsoleDimensions
from rich.markup import escape

from ..errors import JRError
from ..runtime import env_rank

from os import environ as _environ  # noqa: E402  (the JRConsole's COLUMNS check)

#: the layout width of a console whose stream is not a terminal (a pipe, a file, CI logs),
#: instead of rich's 80 columns, which cut table cells and lines in two (``COLUMNS`` overrides it)
PIPE_WIDTH = 240


class JRConsole(Console):
    """A rich console laid out at :data:`PIPE_WIDTH` columns when its stream is not a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in _environ:
            return ConsoleDimensions(max(size.width, PIPE_WIDTH), size.height)
        return size

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


#: progress, warnings and errors go to stderr ...
console = JRConsole(stderr=True)
#: ... results (the final tables, verdicts and summary lines) to stdout: `jr-eval > out.txt` keeps them
out = JRConsole()


def results_console(as_json: bool = False) -> Console:
    """Where a command prints its result tables: stdout, or stderr when --json owns stdout."""
    return console if as_json else out


#: set to 1 to see the traceback of an unexpected error (the exit status stays 2)
DEBUG_ENV = "JR_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def print_error(message: str) -> None:
    """One red ``error:`` line on stderr (never wrapped: scripts read it as one line)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def os_error_message(exc: OSError) -> str:
    """An operating-system error as one line naming the path, the problem and the fix."""
    path = exc.filename if exc.filename is not None else ""
    what = exc.strerror or str(exc)
    fix = {"Read-only file system": "write to a writable location instead (e.g. another --out)",
           "Permission denied": "use a path you may write to, or fix its permissions",
           "Not a directory": "a file sits where a directory is needed: choose another path",
           "File exists": "a file sits where a directory is needed: choose another path",
           "No space left on device": "free some space or write elsewhere"}.get(what, "check the path")
    return f"{path}: {what}; {fix}" if path else f"{what}; {fix}"


def handle_errors(fn):
    """Turn JRError (bad input) into one red message on stderr and exit status 2; under
    torchrun the message names the rank, and the process group is closed on the way out.

    Anything else that escapes a command is one line and exit status 2 as well (never 1,
    which CI reads as "gate failed"): an OSError names its path, any other exception its type
    and message; ``JR_DEBUG=1`` prints the traceback before that line."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rank = env_rank()
        where = f"rank {rank}: " if rank is not None else ""
        try:
            out = fn(*args, **kwargs)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # every rank done before any tears the group down: a rank that left while
                # another still used the group was aborted by gloo ("terminate called…")
                torch.distributed.barrier()
            return out
        except JRError as exc:
            print_error(where + str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]{' on ' + where[:-2] if where else ''}; finished work is kept")
            sys.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except OSError as exc:
            if debugging():
                traceback.print_exc()
            print_error(where + os_error_message(exc))
            sys.exit(2)
        except Exception as exc:  # noqa: BLE001 - the last line of defence of the command line
            if debugging():
                traceback.print_exc()
            print_error(f"{where}unexpected error {type(exc).__name__}: {' '.join(str(exc).split())} — "
                        f"a bug, please report it; set {DEBUG_ENV}=1 to see the traceback")
            sys.exit(2)
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    return wrapper


class JRGroup(click.Group):
    """A click group whose usage errors are one line too (``error: …``, exit status 2), like
    every other error of the command line, and whose unexpected errors never exit 1."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            msg = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                msg += f" (see {ctx.command_path} --help)"
            print_error(msg)
            sys.exit(exc.exit_code if exc.exit_code != 1 else 2)
        except click.Abort:
            console.print("[yellow]interrupted[/]; finished work is kept")
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - outside a command (option callbacks, completion)
            if debugging():
                traceback.print_exc()
            print_error(f"unexpected error {type(exc).__name__}: {' '.join(str(exc).split())} — a bug, please "
                        f"report it; set {DEBUG_ENV}=1 to see the traceback")
            sys.exit(2)
        sys.exit(rv if isinstance(rv, int) else 0)


device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.")
config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="YAML file with options; command-line options override it.")


# ---------------------------------------------------------------------------
# the model and image-folder options of `jr-eval run` and `jr-eval cells`
# ---------------------------------------------------------------------------

class MappingType(click.ParamType):
    """A YAML/JSON flow mapping (``{width: 16, depth: 2}``) or ``key=value,key=value``."""

    name = "MAPPING"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        text = str(value).strip()
        try:
            if text.startswith("{"):
                out = yaml.safe_load(text)
            else:
                out = {}
                for part in filter(None, (p.strip() for p in text.split(","))):
                    k, sep, v = part.partition("=")
                    if not sep or not k.strip():
                        raise ValueError(part)
                    out[k.strip()] = yaml.safe_load(v.strip())
        except (yaml.YAMLError, ValueError):
            self.fail(f"{value!r} is not a mapping; write '{{width: 16, depth: 2}}' or 'width=16,depth=2'", param, ctx)
        if not isinstance(out, dict):
            self.fail(f"{value!r} is not a mapping; write '{{width: 16, depth: 2}}' or 'width=16,depth=2'", param, ctx)
        return out


class NumbersType(click.ParamType):
    """Comma-separated numbers (``0.485,0.456,0.406``; ``3x224x224`` for shapes)."""

    def __init__(self, kind=float, name: str = "X,Y,Z"):
        self.kind, self.name = kind, name

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return list(value)
        parts = [p for p in str(value).replace("x", ",").replace("×", ",").replace(" ", ",").split(",") if p]
        try:
            out = [self.kind(p) for p in parts]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {'integers' if self.kind is int else 'numbers'}",
                      param, ctx)
        if not out:
            self.fail("expected at least one value", param, ctx)
        return out


#: (name, click option) of the model options; ``--arch`` is added where a command has none
MODEL_OPTION_NAMES = ("arch_kwargs", "num_classes", "mean", "std", "input_size")
DATA_OPTION_NAMES = ("image_size", "resize", "crop")


def model_data_options(arch: bool = False, data: bool = True):
    """Add the model options (``--arch-kwargs``, ``--num-classes``, ``--mean``, ``--std``,
    ``--input-size``; ``--arch`` with ``arch=True``) and the image-folder options
    (``--image-size``, ``--resize``, ``--crop``) to a command; the command receives the ones
    given as one mapping ``model_opts`` (AuditConfig field names)."""
    opts = []
    if arch:
        opts.append(click.option("--arch", default=None, help=ARCH_HELP))
    opts += [
        click.option("--arch-kwargs", type=MappingType(), default=None,
                     help="Keyword arguments of a timm/torchvision/factory --arch, e.g. '{width: 16}' or width=16."),
        click.option("--num-classes", type=click.IntRange(min=1), default=None,
                     help="Classes of bare weights where they differ from the architecture's default "
                          "(e.g. a timm/torchvision model fine-tuned on 10 classes)."),
        click.option("--mean", type=NumbersType(float, "M[,M,M]"), default=None,
                     help="Per-channel mean the model expects to be subtracted, in [0,1] pixel units "
                          "(with --std; default: the card, or the timm/torchvision pretrained config)."),
        click.option("--std", type=NumbersType(float, "S[,S,S]"), default=None,
                     help="Per-channel std the model expects inputs to be divided by (with --mean)."),
        click.option("--input-size", type=NumbersType(int, "C,H,W"), default=None,
                     help="Input shape C,H,W the model takes (default: its card or pretrained config, else the data's)."),
    ]
    if data:
        opts += [
            click.option("--image-size", type=click.IntRange(min=1), default=None,
                         help="Image folders: resize the shorter side to S and centre crop S×S "
                              "(default: the model's input size, with its pretrained config's resize/crop)."),
            click.option("--resize", type=click.IntRange(min=1), default=None,
                         help="Image folders: resize the shorter side to R (then --crop)."),
            click.option("--crop", type=click.IntRange(min=1), default=None,
                         help="Image folders: centre crop C×C after --resize."),
        ]
    names = MODEL_OPTION_NAMES + (DATA_OPTION_NAMES if data else ())

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            given = {k: kwargs.pop(k) for k in names if k in kwargs}
            if arch:
                given["arch"] = kwargs.pop("arch", None)
            return fn(*args, model_opts={k: v for k, v in given.items() if v is not None}, **kwargs)
        for opt in reversed(opts):
            wrapper = opt(wrapper)
        return wrapper
    return deco


ARCH_HELP = ("Architecture of bare weights (.safetensors, .pt/.pth state dicts read with weights_only=True): "
             "a registry name (lenet, resnet18-cifar, …), timm:NAME, torchvision:NAME, pkg.module:factory or "
             "path/to/models.py:factory.")
