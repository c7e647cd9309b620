"""Pieces shared by the click commands: error handling, consoles, common options."""

from __future__ import annotations

import functools
import sys

import click
from rich.console import Console

from ..errors import JRError
from ..runtime import resolve_device  # noqa: F401  (re-exported for the commands)

#: progress, tables and messages go to stderr so that --json output on stdout stays clean
console = Console(stderr=True)


def handle_errors(fn):
    """Turn JRError (bad input) into one red message on stderr and exit status 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except JRError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; finished work is kept")
            sys.exit(130)
    return wrapper


device_option = click.option(
    "--device", default="auto", show_default=True,
    help="auto (CUDA when present), cpu, cuda or cuda:N.")
config_option = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), default=None,
    help="YAML file with options; command-line options override it.")
