"""``plan_cohort``: every check a run makes before it writes, and what it would do; the dry run and the real run
both begin here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slide2expr.contract import STORE_FORMAT, STORE_JSON, StoreError, embeddings_path
from slide2expr.featurize._embed import DEFAULT_BATCH, resolve_device
from slide2expr.featurize._executors import default_workers
from slide2expr.featurize._inputs import SlideInput, collect_slides, select_shard
from slide2expr.featurize._options import FeaturizeOptions, FeaturizeOptionsError
from slide2expr.featurize._plan import TilingParams


@dataclass(frozen=True)
class PlannedSlide:
    """A slide of the run and where its embeddings go; ``exists``: they are there already, so resume skips the
    slide when they match the run's configuration and the slide's file (unless ``force``)."""

    slide: SlideInput
    embeddings: Path
    exists: bool


@dataclass(frozen=True)
class CohortPlan:
    """What :func:`featurize_cohort` would do with these slides, store and options (see :func:`plan_cohort`)."""

    store: Path
    tiling: TilingParams
    #: the encoder's registry name (the store's encoder folder)
    encoder: str
    #: the device the encoder runs on (``cpu``, ``cuda``, ``cuda:N``), batches of ``batch_size`` tiles, and the reader
    #: processes (0: reading in this process)
    device: str
    batch_size: int
    workers: int
    force: bool
    #: the slides of the run (this shard), sorted by slide id
    slides: tuple[PlannedSlide, ...]

    @property
    def inputs(self) -> list[SlideInput]:
        return [p.slide for p in self.slides]

    @property
    def n_existing(self) -> int:
        """Slides whose embeddings exist (skipped when they match, unless ``force``)."""
        return sum(p.exists for p in self.slides)


def plan_cohort(
    slides: Any, *, store: str | os.PathLike, options: FeaturizeOptions | None = None
) -> CohortPlan:
    """Check a run's arguments as :func:`featurize_cohort` does, and say what it would do; writes nothing.

    Checks the store (a folder, of this format), the slides (files, folders, slide lists, patient table, shard),
    the encoder (registered, its weights found here or on the hub: nothing is downloaded), the device (available
    here) and ``compile`` on it.

    Parameters
    ----------
    slides
        Slide files, a directory (searched recursively), a CSV/TSV list (``path`` [, ``slide_id``, ``patient_id``,
        ``mpp``]), a list of those, or a list of :class:`SlideInput`.
    store
        The store directory (need not exist).
    options
        How to featurize (default: ``FeaturizeOptions()``).

    Returns
    -------
    CohortPlan
        The slides in order with their embeddings file, the tiling, encoder, device, batch size and readers.
    """
    options = FeaturizeOptions() if options is None else options
    root = _check_store(store)
    if isinstance(slides, list) and slides and all(isinstance(s, SlideInput) for s in slides):
        items = sorted(slides, key=lambda s: s.slide_id)
    else:
        items = collect_slides(slides, patients=options.patients, mpp_override=options.mpp_override)
    items = select_shard(items, options.shard)
    name = _check_encoder(options)
    device = _device(options)
    device_type = device.split(":", 1)[0]
    if options.compile == "on" and device_type != "cpu":
        raise FeaturizeOptionsError(
            f"compile='on': compiling is measured and supported on the CPU only, not on {device}; use compile='off'"
        )
    tiling = options.tiling_params
    return CohortPlan(
        store=root,
        tiling=tiling,
        encoder=name,
        device=device,
        batch_size=options.batch_size or DEFAULT_BATCH.get(device_type, DEFAULT_BATCH["cpu"]),
        workers=default_workers(device_type) if options.workers is None else options.workers,
        force=options.force,
        slides=tuple(
            PlannedSlide(s, p, p.is_file())
            for s in items
            for p in [embeddings_path(root, tiling.tiling, name, s.slide_id)]
        ),
    )


def _check_store(store: str | os.PathLike) -> Path:
    """``store`` as a Path: a folder to create, or an existing store of this format."""
    root = Path(store)
    if root.exists() and not root.is_dir():
        raise StoreError(f"store {store} is a file, not a folder: give a new folder or an existing store")
    meta = root / STORE_JSON
    if meta.is_file():
        fmt = json.loads(meta.read_text()).get("format")
        if fmt != STORE_FORMAT:
            raise StoreError(f"{root} has store format {fmt}; this slide2expr reads format {STORE_FORMAT}")
    return root


def _check_encoder(options: FeaturizeOptions) -> str:
    """The encoder's registry name, once it is known and its weights are found (nothing is downloaded)."""
    if not isinstance(options.encoder, str):
        return options.encoder.spec.name
    from slide2expr.featurize.encoders import get_spec, locate_weights

    spec = get_spec(options.encoder)
    if options.weights is not None and not spec.needs_weights:
        raise FeaturizeOptionsError(
            f"weights={str(options.weights)!r}: encoder {spec.name!r} is weight-free; leave weights out"
        )
    if spec.needs_weights:
        locate_weights(spec, weights=options.weights)
    return spec.name


def _device(options: FeaturizeOptions) -> str:
    """The device the run's encoder runs on: ``options.device`` resolved, or an encoder object's own under
    ``auto``."""
    device = resolve_device(options.device)
    if isinstance(options.encoder, str) or options.device != "auto":
        return device
    import torch

    return str(next(iter(options.encoder.buffers()), torch.empty(0)).device)
