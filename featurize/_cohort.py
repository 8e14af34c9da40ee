"""``plan_cohort``: every check a run makes before it writes, and what it would do; the dry run and the real run
both begin here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slide2expr.contract import (
    STORE_FORMAT,
    STORE_JSON,
    ObjectPath,
    StoreError,
    embeddings_path,
    is_remote,
    store_path,
)
from slide2expr.featurize._embed import DEFAULT_BATCH, resolve_device
from slide2expr.featurize._executors import default_workers
from slide2expr.featurize._inputs import (
    SlideInput,
    SlideListError,
    collect_slides,
    missing_message,
    select_shard,
)
from slide2expr.featurize._options import FeaturizeOptions, FeaturizeOptionsError, square_input_px
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

    Checks the store (a folder of this format, or one that can be made there), the slides (files that exist,
    folders, slide lists, patient table, shard), the encoder (given, registered, its weights found here or on the
    hub with a readable suffix: nothing is downloaded; a square input size), the device (available here) and
    ``compile`` on it. Every argument the real run checks is checked here: a bad one fails the same way with and
    without ``--dry-run``.

    Parameters
    ----------
    slides
        Slide files, a directory (searched recursively), a CSV/TSV list (``path`` [, ``slide_id``, ``patient_id``,
        ``mpp``]), a list of those, or a list of :class:`SlideInput`.
    store
        The store directory (need not exist).
    options
        How to featurize (:class:`FeaturizeOptions`; its ``encoder`` has no default and must be given).

    Returns
    -------
    CohortPlan
        The slides in order with their embeddings file, the tiling, encoder, device, batch size and readers.

    Examples
    --------
    >>> try:
    ...     plan_cohort("slide.svs", store="STORE", options=FeaturizeOptions())
    ... except FeaturizeOptionsError as exc:
    ...     print(str(exc)[:63])
    encoder not given: choose one with --encoder NAME (Python: Feat
    """
    options = FeaturizeOptions() if options is None else options
    root = _check_store(store)
    name = _check_encoder(options)
    if isinstance(slides, list) and slides and all(isinstance(s, SlideInput) for s in slides):
        items = sorted(slides, key=lambda s: s.slide_id)
        missing = [str(s.path) for s in items if not Path(s.path).exists()]
        if missing:
            raise SlideListError(missing_message(missing))
    else:
        items = collect_slides(slides, patients=options.patients, mpp_override=options.mpp_override)
    items = select_shard(items, options.shard)
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


def _check_store(store: str | os.PathLike) -> Path | ObjectPath:
    """``store`` as a Path: a folder that can be made (its nearest existing parent is a folder this process may
    write in), or an existing store of this format; a URI (``s3://bucket/prefix``) as an :class:`ObjectPath`."""
    root = store_path(store)
    if is_remote(root):  # an object store has no folders to make; init_store checks store.json's format
        if root.is_file():
            raise StoreError(
                f"store {store} is an object, not a prefix: give a new prefix or an existing store"
            )
        return root
    if root.exists() and not root.is_dir():
        raise StoreError(f"store {store} is a file, not a folder: give a new folder or an existing store")
    parent = next(p for p in (root.absolute(), *root.absolute().parents) if p.exists())
    if not parent.is_dir():
        raise StoreError(f"store {store}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"store {store}: no permission to write in {parent}; give a folder you may write in")
    meta = root / STORE_JSON
    if meta.is_file():
        fmt = json.loads(meta.read_text()).get("format")
        if fmt != STORE_FORMAT:
            raise StoreError(f"{root} has store format {fmt}; this slide2expr reads format {STORE_FORMAT}")
    return root


def _check_encoder(options: FeaturizeOptions) -> str:
    """The encoder's registry name, once it is given, known, its weights found (nothing is downloaded) and its
    input square or ``input_px`` given."""
    if options.encoder is None:
        raise FeaturizeOptionsError(encoder_choices())
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
    size = (spec.pretrained_cfg or {}).get("input_size")
    if options.input_px is None and size is not None:
        square_input_px(spec.name, int(size[-2]), int(size[-1]))
    return spec.name


def encoder_choices() -> str:
    """The message for a run without an encoder: how to give one, and the registry's encoders by whether their
    weights are here (checked on this machine; nothing is downloaded)."""
    from slide2expr.featurize.encoders import find_local_weights, list_encoders

    here, free, missing = [], [], []
    for spec in list_encoders():
        if not spec.needs_weights:
            free.append(f"{spec.name} ({spec.dim}-d: stain and texture statistics for quick CPU checks)")
        elif find_local_weights(spec) is not None:
            here.append(f"{spec.name} ({spec.dim}-d)")
        else:
            missing.append(spec.name)
    return (
        "encoder not given: choose one with --encoder NAME (Python: FeaturizeOptions(encoder=NAME)); "
        f"weights here: {', '.join(here) or 'none'}; weight-free: {', '.join(free) or 'none'}; "
        f"weights not found here: {', '.join(missing) or 'none'} (`slide2expr encoders` says where each file goes)"
    )


def _device(options: FeaturizeOptions) -> str:
    """The device the run's encoder runs on: ``options.device`` resolved, or an encoder object's own under
    ``auto``."""
    device = resolve_device(options.device)
    if isinstance(options.encoder, str) or options.device != "auto":
        return device
    import torch

    return str(next(iter(options.encoder.buffers()), torch.empty(0)).device)
