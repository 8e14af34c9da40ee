"""The one Typer app; each command group lives in its own module under ``slide2expr/commands/``."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="slide2expr",
    help=(
        "Predict bulk gene expression from H&E whole-slide images and show where in the tissue it comes from.\n\n"
        "Pipeline: synth (demo cohort) → featurize → targets import → sql → compare / train / predict → explain.\n"
        "`make demo` runs it all on a synthetic cohort."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

#: Exit status for bad arguments (Typer/Click usage errors use it too).
EXIT_BAD_ARGS = 2
#: Exit status for a batch run in which some items failed.
EXIT_SOME_FAILED = 3


def fail(message: str, *, code: int = EXIT_BAD_ARGS) -> typer.Exit:
    """Print ``message`` verbatim (paths and SQL may hold ``[…]``) after a red "error:" on stderr, and return the
    Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)
