"""Rendering the library's progress and warning events with rich (the library prints nothing)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from ..runtime import Event


class RichEvents:
    """An ``on_event`` handler that shows tasks as rich progress bars and warnings as lines.

    Use as a context manager around the library call; ``enabled=False`` keeps warnings and
    info lines but draws no bars (``--quiet`` still shows what went wrong).
    """

    def __init__(self, console: Console, enabled: bool = True, stats: bool = False):
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn()]
        if stats:
            columns.append(TextColumn("{task.fields[stats]}"))
        self.console = console
        self.progress = Progress(*columns, console=console, disable=not enabled, transient=False)
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
            self.console.print(f"[bold yellow]warning:[/] {ev.message}", highlight=False, markup=True)
        elif ev.kind == "info":
            self.console.print(f"[cyan]{ev.message.split(':', 1)[0]}:[/]{ev.message.split(':', 1)[1]}"
                               if ":" in ev.message else ev.message, highlight=False)

    def _task(self, name: str) -> TaskID:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=None, stats="")
        return self.tasks[name]

