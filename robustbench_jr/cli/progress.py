"""Rendering the library's progress and warning events with rich (the library prints nothing)."""

from __future__ import annotations

import os
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..runtime import Event


def _clock(seconds) -> str:
    if seconds is None:
        return "-:--"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


#: seconds between two plain progress lines when the output is not a terminal
PLAIN_EVERY = float(os.environ.get("JR_PROGRESS_EVERY", "5"))


class RichEvents:
    """An ``on_event`` handler that shows tasks as rich progress bars and warnings as lines.

    Use as a context manager around the library call; ``enabled=False`` keeps warnings and
    info lines but draws no bars (``--quiet`` still shows what went wrong). When the console
    is not a terminal (CI logs, ``2> log``), bars cannot redraw: a plain line with every
    task's progress, elapsed time and ETA is printed at most every :data:`PLAIN_EVERY` seconds.
    """

    def __init__(self, console: Console, enabled: bool = True, stats: bool = False):
        self.plain = enabled and not console.is_terminal
        self.last_line = time.monotonic()
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        if stats:
            columns.append(TextColumn("{task.fields[stats]}"))
        self.console = console
        self.progress = Progress(*columns, console=console, disable=not enabled or self.plain, transient=False)
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> "RichEvents":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, ev: Event) -> None:
        if ev.kind == "task":
            fields = {"stats": ev.data.get("stats", "")}
            if ev.name in self.tasks:
                self.progress.reset(self.tasks[ev.name], total=ev.total, completed=ev.amount, visible=True,
                                    description=ev.description, **fields)
            else:
                self.tasks[ev.name] = self.progress.add_task(ev.description, total=ev.total, completed=ev.amount,
                                                             **fields)
        elif ev.kind == "advance":
            task = self._task(ev.name)
            kwargs = {"description": ev.description} if ev.description else {}
            if "stats" in ev.data:
                kwargs["stats"] = ev.data["stats"]
            if "completed" in ev.data:
                self.progress.update(task, completed=ev.data["completed"], **kwargs)
            else:
                self.progress.update(task, advance=ev.amount, **kwargs)
        elif ev.kind == "done":
            task = self._task(ev.name)
            if ev.description:
                self.progress.update(task, description=ev.description)
            elif ev.name != "audit":
                self.progress.update(task, visible=False)
        elif ev.kind == "warning":
            self.console.print(f"[bold yellow]warning:[/] {escape(ev.message)}", highlight=False, markup=True,
                               soft_wrap=True)
        elif ev.kind == "info":
            head, sep, rest = ev.message.partition(":")
            self.console.print(f"[cyan]{escape(head)}:[/]{escape(rest)}" if sep else escape(ev.message),
                               highlight=False, soft_wrap=True)

        if self.plain and ev.kind in ("advance", "done") and time.monotonic() - self.last_line >= PLAIN_EVERY:
            self._plain_line()

    def _plain_line(self) -> None:
        self.last_line = time.monotonic()
        parts = []
        for task in self.progress.tasks:
            if not task.visible:
                continue
            what = task.description.strip() or "progress"
            done = f"{task.completed:g}/{task.total:g}" if task.total else f"{task.completed:g}"
            eta = task.time_remaining
            parts.append(f"{what} {done} ({_clock(task.elapsed)} elapsed"
                         + (f", ETA {_clock(eta)})" if eta is not None else ")"))
        if parts:
            self.console.print(" | ".join(parts), highlight=False, markup=False, soft_wrap=True)

    def _task(self, name: str) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=None, stats="")
        return self.tasks[name]

