"""``slide2expr featurize``: slides → tissue → tiles → encoder → Parquet store, for whole cohorts.

The flags are :class:`slide2expr.featurize.FeaturizeOptions` fields with dashes; the library checks them
(:func:`slide2expr.featurize.plan_cohort`, which ``--dry-run`` shows and the real run begins with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_SOME_FAILED, DryRunOpt, app, fail, reported


@app.command(no_args_is_help=True)
def featurize(
    slides: Annotated[
        list[Path],
        typer.Argument(
            metavar="SLIDES...",
            help="Slide files, directories (searched recursively) or a CSV/TSV list "
            "(path[, slide_id, patient_id, mpp]).",
            show_default=False,
        ),
    ],
    store: Annotated[Path, typer.Option("--store", "-s", help="Store directory (created if missing).")],
    encoder: Annotated[
        str | None,
        typer.Option("--encoder", "-e", help="Encoder name (`slide2expr encoders`; default stain-texture)."),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Weights file for the encoder.")] = None,
    mpp: Annotated[
        float | None, typer.Option(help="Tile resolution in µm/px (default 0.5, i.e. 20x).")
    ] = None,
    magnification: Annotated[
        float | None, typer.Option(help="Tile magnification (20 = 0.5 µm/px); instead of --mpp.")
    ] = None,
    tile_px: Annotated[
        int | None, typer.Option(help="Tile size in pixels at the tile resolution (default 224).")
    ] = None,
    overlap_px: Annotated[
        int | None,
        typer.Option(help="Overlap between neighbouring tiles, px at the tile resolution (default 0)."),
    ] = None,
    min_tissue: Annotated[
        float | None, typer.Option(help="Keep tiles with at least this tissue fraction (default 0.5).")
    ] = None,
    mpp_override: Annotated[
        float | None,
        typer.Option(help="Level-0 µm/px for slides whose metadata lacks it (a CSV mpp column wins)."),
    ] = None,
    patients: Annotated[
        Path | None, typer.Option(help="Slide→patient CSV/TSV (columns patient_id and slide_id or path).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto (CUDA when there is a GPU; default) | cpu | cuda.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tiles per forward pass (default 8 on a CPU, 256 on CUDA).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Reader processes (default beside a GPU: spare cores, at most 8; on a CPU: 0 on ≤ 2 cores, else 1). "
            "0 reads in the main process, on one thread per core, between encoder batches."
        ),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="Stored embeddings: float32 (default) | float16.")] = None,
    precision: Annotated[
        str | None, typer.Option(help="auto (bf16 where supported; default) | bf16 | fp32.")
    ] = None,
    compile: Annotated[
        str | None,
        typer.Option(
            help="auto | on | off: compile the encoder with torch.compile (CPU only; faster CNNs after tens of "
            "seconds of compiling once per run). auto times the first batches of a CNN in fp32 and compiles it when "
            "the run's remaining eager work is long enough to pay for it; it runs eagerly where compiling fails "
            "(default auto).",
        ),
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="i/n: every n-th slide by sorted slide id, from i.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Redo slides whose outputs already match.")] = False,
    input_px: Annotated[
        int | None,
        typer.Option(help="Resize tiles to this size for the encoder (default: its data-config size)."),
    ] = None,
    dry_run: DryRunOpt = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")] = True,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Featurize slides into a store, resumably: a slide whose outputs match is skipped (--force redoes it).

    Exit status: 0 all slides ok (or no tissue), 3 some slides failed (each failure is recorded in its
    slides/ row with the reason), 2 bad arguments.
    """
    import json

    from slide2expr import featurize as fz

    if json_out is not None and not json_out.parent.is_dir():
        raise fail(f"--json {json_out}: folder {json_out.parent} does not exist")
    given = {
        "encoder": encoder, "weights": weights, "mpp": mpp, "magnification": magnification, "tile_px": tile_px,
        "overlap_px": overlap_px, "min_tissue": min_tissue, "mpp_override": mpp_override, "patients": patients,
        "device": device, "batch_size": batch_size, "workers": workers, "dtype": dtype, "precision": precision,
        "compile": compile, "shard": shard, "input_px": input_px,
    }  # fmt: skip
    with reported(*_library_errors()):
        options = fz.FeaturizeOptions(force=force, **{k: v for k, v in given.items() if v is not None})
        if dry_run:
            _print_plan(fz.plan_cohort([str(s) for s in slides], store=store, options=options), shard=shard)
            return
        summary = fz.featurize_cohort(
            [str(s) for s in slides], store=store, options=options, progress=progress
        )
    _print_summary(summary)
    if json_out is not None:
        json_out.write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary.n_failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _library_errors() -> tuple[type[BaseException], ...]:
    """The errors a run's arguments can cause: one line each, exit status 2."""
    from slide2expr import featurize as fz
    from slide2expr.contract import StoreError
    from slide2expr.featurize import encoders

    return (
        fz.FeaturizeOptionsError,
        fz.SlideListError,
        fz.DeviceMemoryError,
        StoreError,
        encoders.UnknownEncoderError,
        encoders.WeightsNotFoundError,
        encoders.WeightsMismatchError,
        encoders.CompileError,
    )


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"featurize → {summary.store} ({summary.tiling}, {summary.encoder})")
    for col in ("slide", "status", "tiles", "seconds", "error"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "no_tissue": "yellow", "failed": "bold red", "skipped": "dim"}
    for r in summary.results:
        table.add_row(
            r.slide_id,
            f"[{style[r.status]}]{r.status}[/]",
            str(r.n_tiles) if r.status != "skipped" else "",
            f"{r.seconds:.1f}" if r.status != "skipped" else "",
            escape(r.error) if r.error else (f"[yellow]note:[/] {escape(r.note)}" if r.note else ""),
        )
    out = Console()
    out.print(table)
    counts = ", ".join(f"{summary.count(s)} {s}" for s in ("ok", "no_tissue", "failed", "skipped"))
    out.print(
        f"{counts}; {summary.tiles} tiles in {summary.seconds:.1f} s ({summary.tiles_per_s:.1f} tiles/s, "
        f"{summary.device}, {summary.precision}"
        + (
            f", compiled{f' in {summary.seconds_compile:.0f} s' if summary.seconds_compile else ''}"
            if summary.compiled
            else ""
        )
        + ")"
    )


def _print_plan(plan, *, shard: str | None) -> None:
    from rich.console import Console
    from rich.table import Table

    shard = f", shard {shard}" if shard else ""
    table = Table(
        title=f"plan: {len(plan.slides)} slides → {plan.store} (tiling {plan.tiling.name}, encoder {plan.encoder}, "
        f"min tissue {plan.tiling.min_tissue}, {plan.device}, batch {plan.batch_size}, {plan.workers} readers{shard})"
    )
    for col in ("slide", "patient", "path", "mpp", "output"):
        table.add_column(col, overflow="fold")
    for p in plan.slides:
        s = p.slide
        state = "exists (skipped if it matches)" if p.exists and not plan.force else "to do"
        table.add_row(
            s.slide_id, s.patient_id, str(s.path), "metadata" if s.mpp is None else f"{s.mpp}", state
        )
    Console().print(table)
