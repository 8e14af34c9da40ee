"""``slide2expr featurize``: slides → tissue → tiles → encoder → Parquet store, for whole cohorts."""

from __future__ import annotations

from pathlib import Path

import typer

from slide2expr._app import EXIT_SOME_FAILED, app, fail


@app.command(no_args_is_help=True)
def featurize(
    slides: list[Path] = typer.Argument(  # noqa: B008
        ...,
        help="Slide files, directories (searched recursively) or a CSV/TSV list (path[, slide_id, patient_id, mpp]).",
        show_default=False,
    ),
    store: Path = typer.Option(..., "--store", "-s", help="Store directory (created if missing)."),
    encoder: str = typer.Option(
        "stain-texture", "--encoder", "-e", help="Encoder name (`slide2expr encoders`)."
    ),
    weights: Path | None = typer.Option(None, "--weights", help="Weights file for the encoder."),
    mpp: float | None = typer.Option(None, "--mpp", help="Tile resolution in µm/px (default 0.5, i.e. 20x)."),
    magnification: float | None = typer.Option(
        None, "--magnification", help="Tile magnification (20 = 0.5 µm/px); a synonym of --mpp."
    ),
    tile: int = typer.Option(224, "--tile", help="Tile size in pixels at the tile resolution."),
    overlap: int = typer.Option(
        0, "--overlap", help="Overlap between neighbouring tiles, px at the tile resolution."
    ),
    min_tissue: float = typer.Option(
        0.5, "--min-tissue", help="Keep tiles with at least this tissue fraction."
    ),
    mpp_override: float | None = typer.Option(
        None,
        "--mpp-override",
        help="Level-0 µm/px for slides whose metadata lacks it (a CSV mpp column wins).",
    ),
    patients: Path | None = typer.Option(
        None, "--patients", help="Slide→patient CSV/TSV (columns patient_id and slide_id or path)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when there is a GPU) | cpu | cuda."),
    batch_size: int | None = typer.Option(
        None, "--batch-size", help="Tiles per forward pass (default 8 on a CPU, 256 on CUDA)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Reader processes (default beside a GPU: spare cores, at most 8; on a CPU: 0 on ≤ 2 cores, else 1). "
        "0 reads in the main process, on one thread per core, between encoder batches.",
    ),
    dtype: str = typer.Option("float32", "--dtype", help="Stored embeddings: float32 | float16."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where supported) | bf16 | fp32."),
    compile_mode: str = typer.Option(
        "auto",
        "--compile",
        help="auto | on | off: compile the encoder with torch.compile (CPU only; 16-33% faster for CNNs, 10-40 s "
        "once per run). auto times the first batches of a CNN in fp32 and compiles it when the run's remaining "
        "eager work is >= 60 s; it runs eagerly where compiling fails (default auto).",
        show_default=False,
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="i/n: every n-th slide by sorted slide id, from i."
    ),
    force: bool = typer.Option(False, "--force", help="Redo slides whose outputs already match."),
    input_px: int | None = typer.Option(
        None, "--input-px", help="Resize tiles to this size for the encoder (default: its data-config size)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan (slides, skips, tiling) and stop."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the summary as JSON here."),
) -> None:
    """Featurize slides into a store, resumably: a slide whose outputs match is skipped (--force redoes it).

    Exit status: 0 all slides ok (or no tissue), 3 some slides failed (each failure is recorded in its
    slides/ row with the reason), 2 bad arguments.
    """
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from slide2expr.featurize._inputs import SlideListError, collect_slides, select_shard

    console = Console(stderr=True)
    if mpp is not None and magnification is not None:
        raise fail("give either --mpp or --magnification, not both")
    if mpp is None and magnification is None:
        mpp = 0.5
    if dtype not in ("float32", "float16"):
        raise fail(f"--dtype {dtype!r}: use float32 or float16")
    if precision not in ("auto", "bf16", "fp32"):
        raise fail(f"--precision {precision!r}: use auto, bf16 or fp32")
    if compile_mode not in ("auto", "on", "off"):
        raise fail(f"--compile {compile_mode!r}: use auto, on or off")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise fail(f"--device {device!r}: use auto, cpu or cuda")
    if tile <= 0 or not 0 <= overlap < tile:
        raise fail(f"--tile {tile} / --overlap {overlap}: need tile > 0 and 0 <= overlap < tile")
    if not 0 <= min_tissue <= 1:
        raise fail(f"--min-tissue {min_tissue}: a fraction in [0, 1]")
    if json_out is not None and not json_out.parent.is_dir():
        raise fail(f"--json {json_out}: folder {json_out.parent} does not exist")
    try:
        items = select_shard(
            collect_slides([str(s) for s in slides], patients=patients, mpp_override=mpp_override), shard
        )
    except SlideListError as exc:
        raise fail(str(exc)) from None

    if dry_run:
        from slide2expr.featurize._run import tile_mpp
        from slide2expr.featurize.encoders import UnknownEncoderError, get_spec

        try:
            get_spec(encoder)
            plan_mpp = tile_mpp(mpp, magnification)
        except (UnknownEncoderError, ValueError) as exc:
            raise fail(str(exc)) from None
        _print_plan(
            console,
            items,
            store=store,
            encoder=encoder,
            mpp=plan_mpp,
            tile=tile,
            overlap=overlap,
            min_tissue=min_tissue,
            shard=shard,
            force=force,
        )
        return

    from slide2expr.featurize._run import DeviceMemoryError, featurize_cohort
    from slide2expr.featurize.encoders import CompileError, UnknownEncoderError, WeightsNotFoundError

    try:
        summary = featurize_cohort(
            items,
            store=store,
            encoder=encoder,
            weights=weights,
            mpp=mpp,
            magnification=magnification,
            tile_px=tile,
            overlap_px=overlap,
            min_tissue=min_tissue,
            device=device,
            batch_size=batch_size,
            workers=workers,
            dtype=dtype,
            precision=precision,
            force=force,
            progress=progress,
            input_px=input_px,
            compile=compile_mode,
        )
    except (
        UnknownEncoderError,
        WeightsNotFoundError,
        SlideListError,
        ValueError,
        DeviceMemoryError,
        CompileError,
    ) as exc:
        raise fail(str(exc)) from None

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
    if json_out is not None:
        json_out.write_text(json.dumps(summary.as_dict(), indent=2, default=str))
    if summary.n_failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _print_plan(console, items, *, store, encoder, mpp, tile, overlap, min_tissue, shard, force):
    from rich.table import Table

    from slide2expr.contract import embeddings_path, tiling_name

    tiling = tiling_name(mpp=mpp, tile_px=tile, overlap_px=overlap)
    table = Table(
        title=f"plan: {len(items)} slides → {store} (tiling {tiling}, encoder {encoder}, min tissue {min_tissue}"
        + (f", shard {shard}" if shard else "")
        + ")"
    )
    for col in ("slide", "patient", "path", "mpp", "output"):
        table.add_column(col, overflow="fold")
    for s in items:
        out = embeddings_path(store, tiling, encoder, s.slide_id)
        state = "exists (skipped if it matches)" if out.exists() and not force else "to do"
        table.add_row(
            s.slide_id, s.patient_id, str(s.path), "metadata" if s.mpp is None else f"{s.mpp}", state
        )
    from rich.console import Console

    Console().print(table)
