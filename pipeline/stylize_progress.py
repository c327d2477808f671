"""``stylize``'s terminal display: a rich progress bar with the costs, fed by
``run_style_transfer``'s ``on_step`` callback, and one line naming the feature extractor's
weights, both on stderr (models/ prints nothing)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = ["progress_bar", "announce_weights"]


@contextmanager
def progress_bar(enabled: bool, total: int) -> Iterator[Callable[[dict], None]]:
    """A context giving ``show(costs)``, to call once per iteration: it advances a bar of
    ``total`` steps on stderr showing J, J_content and J_style. When ``enabled`` is false,
    ``show`` does nothing and nothing is displayed."""
    if not enabled:
        yield lambda costs: None
        return

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task):
            s = task.speed
            return Text(f"{s:.2f} it/s" if s else "-- it/s", style="progress.data.speed")

    bar = Progress(
        TextColumn("NST"), BarColumn(bar_width=20), MofNCompleteColumn(),
        TextColumn("J={task.fields[J]:.4g} J_content={task.fields[J_content]:.3g} "
                   "J_style={task.fields[J_style]:.3g}"),
        Speed(), TimeElapsedColumn(),
        console=Console(stderr=True), disable=False, transient=False,
    )
    with bar:
        task = bar.add_task("nst", total=total, J=float("nan"), J_content=float("nan"),
                            J_style=float("nan"))
        yield lambda costs: bar.update(task, advance=1, J=costs["J"], J_content=costs["J_content"],
                                       J_style=costs["J_style"])


def announce_weights(weights_desc: str) -> None:
    """The line "feature extractor: <weights_desc>" on stderr."""
    from rich.console import Console

    Console(stderr=True).print(f"[bold]feature extractor:[/bold] {weights_desc}", highlight=False)
