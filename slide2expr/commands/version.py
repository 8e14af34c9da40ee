"""``slide2expr version``."""

from __future__ import annotations

from slide2expr._app import app


@app.command()
def version() -> None:
    """Print the slide2expr version and the versions of the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    import slide2expr

    print(f"slide2expr {slide2expr.__version__}")
    for pkg in ("torch", "timm", "openslide-python", "openslide-bin", "duckdb", "pyarrow", "lightgbm"):
        try:
            print(f"  {pkg} {v(pkg)}")
        except PackageNotFoundError:
            print(f"  {pkg} (not installed)")
