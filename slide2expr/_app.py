"""The one Typer app; each command group lives in its own module under ``slide2expr/commands/``."""

from __future__ import annotations

import contextlib
from typing import Annotated

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
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it); the command says what was done and how to go on.
EXIT_INTERRUPTED = 130


def fail(message: str, *, code: int = EXIT_BAD_ARGS) -> typer.Exit:
    """Print ``message`` verbatim (paths and SQL may hold ``[…]``) after a red "error:" on stderr, and return the
    Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: one line whatever the terminal's width, so a log or a grep sees the whole message
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextlib.contextmanager
def reported(*errors: type[BaseException]):
    """Turn the library's own errors (its validation, with the library's parameter names, which are the flags'
    names) into a one-line ``error:`` and exit status 2. Validation lives in the library; commands only map."""
    try:
        yield
    except errors as exc:
        raise fail(str(exc)) from exc


#: ``--dry-run``: every stage that writes checks its arguments as the real run does and shows its plan.
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Check every argument as the real run does and show what would be written; write nothing.",
    ),
]
#: ``--overwrite``: replace what slide2expr wrote into a non-empty output folder (``overwrite=True``).
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite", help="Replace the contents of a non-empty --out that slide2expr wrote earlier."
    ),
]
