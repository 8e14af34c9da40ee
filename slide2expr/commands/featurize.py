"""``slide2expr featurize``: slides → tissue → tiles → encoder → Parquet store, for whole cohorts.

The flags are :class:`slide2expr.featurize.FeaturizeOptions` fields with dashes; the library checks them
(:func:`slide2expr.featurize.plan_cohort`, which ``--dry-run`` shows and the real run begins with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from slide2expr._app import EXIT_INTERRUPTED, EXIT_SOME_FAILED, DryRunOpt, app, fail, reported, store_option


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
    store: Annotated[
        Path,
        store_option("Store directory or s3://bucket/prefix (created if missing)."),
    ],
    encoder: Annotated[
        str | None,
        typer.Option(
            "--encoder",
            "-e",
            help="Encoder name; required, no default (it decides what every later stage learns from). "
            "`slide2expr encoders` lists them and which have weights here: a pathology foundation model (uni, "
            "virchow2, …) once its weights file is in place; efficientnet-lite0, whose ImageNet weights ship "
            "with slide2expr, offline; stain-texture, weight-free, for quick CPU checks only.",
        ),
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
        typer.Option(
            help="Level-0 µm/px for slides whose metadata lacks it; a slide's own resolution is kept (the "
            "summary names those slides). To replace a slide's own, give it in a CSV list's mpp column."
        ),
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
    engine: Annotated[
        str | None,
        typer.Option(
            help="local (this process; default) | ray (one actor per GPU, or per CPU node, of a Ray cluster: "
            "pip install 'slide2expr[ray]'). Either claims each slide, so runs sharing a store never write one twice."
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            help="With --engine ray: the cluster (auto, HOST:6379, ray://HOST:10001; default: Ray here)."
        ),
    ] = None,
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

    Every argument is checked before anything is written (a slide file that does not exist included), the same
    way with and without --dry-run. Ctrl-C stops after the slides already embedded are written, says which, and
    the same command resumes. Exit status: 0 all slides ok (or no tissue, or smaller than a tile), 3 some slides
    failed (each failure is recorded in its slides/ row with the reason), 2 bad arguments, 130 interrupted.
    """

    from slide2expr import featurize as fz

    if json_out is not None and not json_out.parent.is_dir():
        raise fail(f"--json {json_out}: folder {json_out.parent} does not exist")
    if json_out is not None and json_out.is_dir():
        raise fail(f"--json {json_out} is a folder: give a file name for the summary")
    given = {
        "encoder": encoder, "weights": weights, "mpp": mpp, "magnification": magnification, "tile_px": tile_px,
        "overlap_px": overlap_px, "min_tissue": min_tissue, "mpp_override": mpp_override, "patients": patients,
        "device": device, "batch_size": batch_size, "workers": workers, "dtype": dtype, "precision": precision,
        "compile": compile, "shard": shard, "input_px": input_px, "engine": engine, "address": address,
    }  # fmt: skip
    with reported(*_library_errors()):
        options = fz.FeaturizeOptions(force=force, **{k: v for k, v in given.items() if v is not None})
        if dry_run:
            _print_plan(fz.plan_cohort([str(s) for s in slides], store=store, options=options), shard=shard)
            return
        try:
            summary = fz.featurize_cohort(
                [str(s) for s in slides], store=store, options=options, progress=progress
            )
        except fz.FeaturizeInterrupted as exc:
            raise _interrupted(exc, json_out) from None
    _print_summary(summary)
    _write_json(json_out, summary)
    if summary.n_failed:
        raise typer.Exit(EXIT_SOME_FAILED)


def _interrupted(exc, json_out: Path | None) -> typer.Exit:
    """After Ctrl-C: the slides finished, the one interrupted and how to resume; exit status 130."""
    from rich.console import Console
    from rich.markup import escape

    _print_summary(exc.summary)
    _write_json(json_out, exc.summary)
    Console(stderr=True, soft_wrap=True).print(f"[yellow]{escape(str(exc))}[/]", highlight=False)
    return typer.Exit(EXIT_INTERRUPTED)


def _write_json(json_out: Path | None, summary) -> None:
    import json

    if json_out is not None:
        json_out.write_text(json.dumps(summary.as_dict(), indent=2, default=str))


def _library_errors() -> tuple[type[BaseException], ...]:
    """The errors a run's arguments can cause: one line each, exit status 2."""
    from slide2expr import featurize as fz
    from slide2expr.contract import StoreError
    from slide2expr.featurize import encoders

    return (
        fz.FeaturizeOptionsError,
        fz.RayEngineError,
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

    from slide2expr.contract import SLIDE_STATUSES

    table = Table(title=f"featurize → {summary.store} ({summary.tiling}, {summary.encoder})")
    for col in ("slide", "status", "tiles", "seconds", "error"):
        table.add_column(col, overflow="fold")
    style = {
        "ok": "green",
        "no_tissue": "yellow",
        "too_small": "yellow",
        "failed": "bold red",
        "skipped": "dim",
    }
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
    counts = ", ".join(f"{summary.count(s)} {s}" for s in (*SLIDE_STATUSES, "skipped"))
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
    unused = summary.mpp_override_unused
    if unused:
        named = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        out.print(
            f"[yellow]note:[/] --mpp-override {summary.mpp_override:g} was not used for {len(unused)} slide(s) "
            f"that carry their own resolution ({escape(named)}); to replace a slide's own, list it in a CSV slide "
            "list with an mpp column (path,mpp) and run again",
            highlight=False,
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
        mpp = f"{s.mpp}" if s.mpp is not None else "metadata"
        if s.mpp is None and s.mpp_fallback is not None:
            mpp += f", else {s.mpp_fallback:g}"
        table.add_row(s.slide_id, s.patient_id, str(s.path), mpp, state)
    Console().print(table)
