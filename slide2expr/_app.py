"""The one Typer app; each command group lives in its own module under ``slide2expr/commands/``."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Annotated, get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

#: Help's name for each type of value: Click's words (``PATH``, ``TEXT``, ``INTEGER``), not Python's annotations.
TYPE_NAMES = {str: "TEXT", int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}
#: Path parameters by what they accept (Typer's ``file_okay``/``dir_okay``).
PATH_NAMES = {"file": "FILE", "dir": "DIRECTORY", "path": "PATH"}
#: Width of rich output (tables) when stdout is not a terminal: a log or a pipe keeps whole rows instead of
#: rich's 80 columns; help (``--help``) keeps the usual width.
WIDTH_OFF_TERMINAL = 1000


def type_name(param: TyperArgument | TyperOption) -> str:
    """What ``--help`` shows as the type of a parameter: ``PATH``, ``TEXT``, ``INTEGER``, ``[a|b]`` for choices, and
    nothing for an on/off flag.

    Examples
    --------
    >>> import typer.main
    >>> def f(out: Annotated[list[str], typer.Option()], n: int = 3, quiet: bool = False): ...
    >>> cmd = typer.main.get_command_from_info(typer.models.CommandInfo(callback=f), pretty_exceptions_short=True,
    ...                                         rich_markup_mode=None)
    >>> [type_name(p) for p in cmd.params if p.name != "help"]
    ['TEXT', 'INTEGER', '']
    """
    if isinstance(param, TyperOption) and param.is_bool_flag:
        return ""
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + TyperOption.display_type(param, None)[1:-1].removeprefix("list[").removesuffix("]") + "]"
    if desc.is_path:
        return PATH_NAMES.get(desc.path_type, "PATH")
    annotation = desc.annotation
    if desc.is_list or desc.is_tuple:
        names = [TYPE_NAMES.get(a, getattr(a, "__name__", str(a)).upper()) for a in get_args(annotation)]
        return " ".join(n for n in names if n != "ELLIPSIS")
    if desc.is_datetime:
        return "DATETIME"
    return TYPE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)).upper())


class _PlainOption(TyperOption):
    def display_type(self, ctx) -> str:
        return type_name(self)


class _PlainArgument(TyperArgument):
    def display_type(self, ctx) -> str:
        return type_name(self)


def _plain(params: list) -> list:
    # the subclasses only change how a type is shown; parsing and state stay TyperOption's and TyperArgument's
    for p in params:
        if type(p) is TyperOption:
            p.__class__ = _PlainOption
        elif type(p) is TyperArgument:
            p.__class__ = _PlainArgument
    return params


class Command(TyperCommand):
    """A command whose ``--help`` names types as Click does (``PATH``, ``INTEGER``) instead of ``<list[Path]>``;
    a parameter's own ``metavar`` still wins."""

    def get_params(self, ctx) -> list:
        return _plain(super().get_params(ctx))


class Group(TyperGroup):
    """The app's group: its commands and sub-groups (``targets``) show types as :class:`Command` does."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _adopt(self)

    def get_params(self, ctx) -> list:
        return _plain(super().get_params(ctx))


def _adopt(group: TyperGroup) -> None:
    for cmd in group.commands.values():
        if type(cmd) is TyperCommand:
            cmd.__class__ = Command
        elif type(cmd) is TyperGroup:
            cmd.__class__ = Group
            _adopt(cmd)


app = typer.Typer(
    cls=Group,
    name="slide2expr",
    help=(
        "Predict bulk gene expression from H&E whole-slide images and show where in the tissue it comes from.\n\n"
        "Pipeline: synth (demo cohort) → featurize → targets import → sql → compare / train / predict → explain.\n"
        "`make demo` runs it all on a synthetic cohort."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def store_option(help: str):
    """``--store``/``-s``: a store folder or an ``s3://bucket/prefix`` URI, kept as typed (a plain ``Path`` would turn
    ``s3://b/x`` into ``s3:/b/x``)."""
    from slide2expr.contract import store_path

    return typer.Option("--store", "-s", parser=store_path, metavar="PATH", help=help)


def _print_version(value: bool) -> None:
    if value:
        from slide2expr import __version__

        typer.echo(f"slide2expr {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    s3_endpoint_url: Annotated[
        str | None,
        typer.Option(
            help="S3-compatible server for s3:// stores (MinIO, Ceph, a local server); default $AWS_ENDPOINT_URL, "
            "else AWS. Credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (or ~/.aws), never flags."
        ),
    ] = None,
    s3_region: Annotated[
        str | None, typer.Option(help="Region of s3:// stores; default $AWS_REGION.")
    ] = None,
) -> None:
    """Predict bulk gene expression from H&E whole-slide images and show where in the tissue it comes from."""
    if s3_endpoint_url or s3_region:
        from slide2expr.contract import configure_storage

        configure_storage(endpoint_url=s3_endpoint_url, region=s3_region)
        ctx.call_on_close(configure_storage)  # in-process callers (tests) get the AWS variables back
    asks_help = any(h in sys.argv[1:] for h in ctx.help_option_names)
    if "COLUMNS" in os.environ or asks_help or sys.stdout.isatty():
        return
    # rich lays tables out at COLUMNS; restored when the command ends (in-process callers such as tests keep theirs)
    os.environ["COLUMNS"] = str(WIDTH_OFF_TERMINAL)
    ctx.call_on_close(lambda: os.environ.pop("COLUMNS", None))


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
