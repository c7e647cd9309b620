"""Pieces shared by the click commands: error handling, consoles, common options."""

from __future__ import annotations

import functools
import sys

import click
import torch
from rich.console import Console
from rich.markup import escape

from ..errors import JRError
from ..runtime import env_rank

#: progress, tables and messages go to stderr so that --json output on stdout stays clean
console = Console(stderr=True)


def handle_errors(fn):
    """Turn JRError (bad input) into one red message on stderr and exit status 2; under
    torchrun the message names the rank, and the process group is closed on the way out."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        rank = env_rank()
        where = f"rank {rank}: " if rank is not None else ""
        try:
            return fn(*args, **kwargs)
        except JRError as exc:
            console.print(f"[bold red]error:[/] {escape(where + str(exc))}", highlight=False, markup=True, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/]{' on ' + where[:-2] if where else ''}; finished work is kept")
            sys.exit(130)
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
    return wrapper


device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.")
config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="YAML file with options; command-line options override it.")
