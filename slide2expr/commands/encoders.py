"""``slide2expr encoders``: the encoder registry as a table (or JSON)."""

from __future__ import annotations

from typing import Annotated

import typer

from slide2expr._app import app


def encoder_rows() -> list[dict]:
    """One JSON-able row per registered encoder, with where its weights are found on this machine."""
    from slide2expr.featurize.encoders import find_local_weights, list_encoders

    rows = []
    for spec in list_encoders():
        found = find_local_weights(spec) if spec.needs_weights else None
        rows.append(
            {
                "name": spec.name,
                "dim": spec.dim,
                "output_mode": spec.output_mode,
                "architecture": spec.architecture,
                "params_m": spec.params_m,
                "licence": spec.licence,
                "gated": spec.gated,
                "hf_hub_id": spec.hf_hub_id,
                "weights_file": spec.weights_file,
                "needs_weights": spec.needs_weights,
                "weights_available": found is not None or not spec.needs_weights,
                "weights_path": str(found.path) if found else None,
                "weights_origin": found.origin if found else None,
                "description": spec.description,
            }
        )
    return rows


@app.command()
def encoders(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the registry as JSON (one object per encoder).")
    ] = False,
) -> None:
    """List the tile encoders: dimension, parameters, licence, gating, and whether weights are available here.

    Weights are looked for in $SLIDE2EXPR_WEIGHTS/<weights file>, $SLIDE2EXPR_WEIGHTS/<name>/<hub file>, the
    Python package that ships them, and the Hugging Face cache.
    """
    import json

    rows = encoder_rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return

    from rich.console import Console
    from rich.table import Table

    from slide2expr.featurize.encoders import WEIGHTS_ENV

    table = Table(
        title="slide2expr encoders",
        caption=f"featurize --encoder NAME picks one (there is no default); weights directory: ${WEIGHTS_ENV} "
        "(--json for paths)",
    )
    table.add_column("name", no_wrap=True)
    table.add_column("dim", justify="right")
    table.add_column("output")
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("licence", overflow="fold")
    table.add_column("gated", justify="center")
    table.add_column("weights here", overflow="fold")
    origins = {"env": f"${WEIGHTS_ENV}", "package": "python package", "hf-cache": "HF cache"}
    for r in rows:
        params = f"{r['params_m']:,.1f} M" if r["params_m"] else "—"
        if not r["needs_weights"]:
            here = "[green]none needed[/]"
        elif r["weights_available"]:
            here = f"[green]yes[/] ({origins.get(r['weights_origin'], r['weights_origin'])})"
        else:
            here = f"[red]no[/]: {r['weights_file']}"
        table.add_row(
            r["name"],
            str(r["dim"]),
            r["output_mode"],
            params,
            r["licence"],
            "yes" if r["gated"] else "no",
            here,
        )
    Console().print(table)
