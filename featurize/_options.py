"""``FeaturizeOptions``: how a cohort is featurized, validated once, when the options are made."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from slide2expr.contract import Tiling, TilingError
from slide2expr.featurize._inputs import SlideListError, level0_mpp_problem, parse_shard
from slide2expr.featurize._plan import TilingParams
from slide2expr.featurize._tissue import TISSUE_MPP

#: plausible tile resolutions, µm/px: from beyond any scanner's finest to a thumbnail's
TILE_MPP_RANGE = (0.05, 100)
#: the tile resolution when neither ``mpp`` nor ``magnification`` (nor ``tiling``) is given: 20x
DEFAULT_MPP = 0.5
#: the tile size when neither ``tile_px`` nor ``tiling`` is given
DEFAULT_TILE_PX = 224
#: smallest ``input_px``: below it the CNN encoders' strides leave nothing to pool
MIN_INPUT_PX = 32
DTYPES = ("float32", "float16")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "off")
#: where slides run: this process, or the actors of a Ray cluster (``featurize._ray``)
ENGINES = ("local", "ray")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class FeaturizeOptionsError(ValueError):
    """A :class:`FeaturizeOptions` field has a value no run can use; the message names the field."""


def magnification_to_mpp(magnification: float) -> float:
    """Objective magnification → µm/px by the usual convention (40x = 0.25, 20x = 0.5, 10x = 1.0).

    >>> magnification_to_mpp(20)
    0.5
    """
    if not magnification > 0:
        raise FeaturizeOptionsError(f"magnification={magnification}: must be positive (20 for 0.5 µm/px)")
    return 10.0 / magnification


@dataclass(frozen=True)
class FeaturizeOptions:
    """How :func:`featurize_cohort` featurizes: everything but the slides, the store and the progress bars.

    Checked when made: a value no run can use raises :class:`FeaturizeOptionsError` naming the field (the command
    line's flag is the field's name with dashes: ``tile_px`` ↔ ``--tile-px``).

    Attributes
    ----------
    encoder
        A registered encoder name (see ``list_encoders()``) or an :class:`~featurize.encoders.Encoder`. There is
        no default: a run without one is refused by :func:`plan_cohort` with the choices and which of them have
        weights here (the encoder decides what every later stage learns from, and the store keeps one folder per
        encoder, so it is chosen, never guessed from what happens to be installed).
    weights
        Weights file for ``encoder`` (default: the registry's search: ``$SLIDE2EXPR_WEIGHTS``, packages, hub cache).
    tiling
        The tile grid as a :class:`~slide2expr.contract.Tiling` or its name (``mpp0.50_px224_ov0``); or give
    mpp, magnification, tile_px, overlap_px
        the tile resolution in µm/px (default 0.5, i.e. 20x) or as an objective magnification (20 → 0.5 µm/px),
        the tile size (default 224) and the overlap between neighbours (default 0), in pixels at that resolution.
    min_tissue
        Keep tiles whose tissue fraction is at least this.
    tissue_mpp
        Resolution of the thumbnail tissue is detected on, µm/px.
    device
        ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
    batch_size
        Tiles per forward pass (default 8 on a CPU, 256 on CUDA).
    workers
        Reader processes (default: spare cores beside a GPU, at most 8; on a CPU 0 on ≤ 2 cores, else 1); 0 reads
        in the main process, on one thread per core, in bursts between encoder batches.
    dtype
        Stored embedding type, ``float32`` or ``float16``.
    precision
        ``auto`` (bf16 autocast where the device has it and the encoder allows), ``bf16`` or ``fp32``.
    input_px
        Size tiles are resized to for the encoder (default: the encoder's data-config input size).
    compile
        ``auto`` (compile CNN encoders with ``torch.compile`` on the CPU in fp32 when the run's remaining eager work,
        timed on its first batches, is long enough to pay for it; eager where compiling fails), ``on`` (CPU only; a
        failure to compile is an error) or ``off``.
    mpp_override
        Level-0 µm/px for slides whose metadata lacks it (a slide list's ``mpp`` column wins per slide).
    patients
        Slide→patient table (CSV/TSV with ``patient_id`` and ``slide_id`` or ``path``) or a dict.
    shard
        ``"i/n"`` (or ``(i, n)``): only every n-th slide by sorted slide id, starting at i.
    force
        Redo slides whose outputs already match (else resume skips them).
    engine
        ``local`` (this process) or ``ray`` (one actor per GPU, or per CPU node, of a Ray cluster; needs
        ``pip install 'slide2expr[ray]'``). Either claims each slide first, so runs sharing a store never write the
        same slide.
    address
        With ``engine='ray'``: the cluster (``auto``: the one this machine belongs to; ``host:6379``;
        ``ray://host:10001``); default: start Ray on this machine.

    Examples
    --------
    >>> FeaturizeOptions(mpp=1.0, tile_px=112).tiling_params.name
    'mpp1.00_px112_ov0'
    >>> try:
    ...     FeaturizeOptions(batch_size=0)
    ... except FeaturizeOptionsError as exc:
    ...     print(exc)
    batch_size=0: give at least 1 tile per forward pass
    """

    encoder: Any = None
    weights: str | os.PathLike | None = None
    tiling: Tiling | str | None = None
    mpp: float | None = None
    magnification: float | None = None
    tile_px: int | None = None
    overlap_px: int | None = None
    min_tissue: float = 0.5
    tissue_mpp: float = TISSUE_MPP
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    dtype: str = "float32"
    precision: str = "auto"
    input_px: int | None = None
    compile: str = "auto"
    mpp_override: float | None = None
    patients: str | os.PathLike | Mapping[str, str] | None = None
    shard: str | tuple[int, int] | None = None
    force: bool = False
    engine: str = "local"
    address: str | None = None

    def __post_init__(self) -> None:
        problem = _choice_problem(self) or _number_problem(self)
        if problem:
            raise FeaturizeOptionsError(problem)
        try:
            parse_shard(self.shard)
        except SlideListError as exc:
            raise FeaturizeOptionsError(str(exc)) from None
        object.__setattr__(self, "_tiling_params", _tiling_params(self))

    @property
    def tiling_params(self) -> TilingParams:
        """The run's tile grid: the :class:`~slide2expr.contract.Tiling` and which tiles are kept."""
        return self._tiling_params


def square_input_px(encoder: str, h: int, w: int) -> int:
    """The encoder's input size when it is square; tiles are squares, so a non-square input needs ``input_px``.

    >>> square_input_px("uni", 224, 224)
    224
    """
    if h != w:
        raise FeaturizeOptionsError(
            f"input_px: encoder {encoder!r} expects non-square {h}x{w} inputs; give input_px"
        )
    return h


def _choice_problem(o: FeaturizeOptions) -> str | None:
    """What is wrong with a field that names one of a few choices, or None."""
    for name, value, allowed in (
        ("dtype", o.dtype, DTYPES),
        ("precision", o.precision, PRECISIONS),
        ("compile", o.compile, COMPILE_MODES),
        ("engine", o.engine, ENGINES),
    ):
        if value not in allowed:
            return f"{name}={value!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}"
    if not isinstance(o.device, str) or not _DEVICE.fullmatch(o.device):
        return f"device={o.device!r}: use auto, cpu, cuda or cuda:N with N a GPU's index"
    if o.address is not None and o.engine != "ray":
        return f"address={o.address!r}: a Ray cluster's address goes with engine='ray' (--engine ray)"
    return None


def _number_problem(o: FeaturizeOptions) -> str | None:
    """What is wrong with a numeric field, or None."""
    if not 0.0 <= o.min_tissue <= 1.0:
        return f"min_tissue={o.min_tissue}: a fraction in [0, 1]"
    if not o.tissue_mpp > 0:
        return f"tissue_mpp={o.tissue_mpp}: a positive resolution in µm/px"
    if o.batch_size is not None and o.batch_size < 1:
        return f"batch_size={o.batch_size}: give at least 1 tile per forward pass"
    if o.input_px is not None and o.input_px < MIN_INPUT_PX:
        return (
            f"input_px={o.input_px}: the encoder's input is at least {MIN_INPUT_PX} px (leave it out for the "
            "encoder's own size)"
        )
    if o.workers is not None and o.workers < 0:
        return f"workers={o.workers}: 0 (read in this process) or more reader processes"
    if o.mpp_override is not None and (problem := level0_mpp_problem(float(o.mpp_override))):
        return f"mpp_override={o.mpp_override}: {problem}"
    return None


def _tiling_params(o: FeaturizeOptions) -> TilingParams:
    """The tile grid from ``tiling``, or from ``mpp``/``magnification``, ``tile_px`` and ``overlap_px``."""
    loose = {"mpp": o.mpp, "magnification": o.magnification, "tile_px": o.tile_px, "overlap_px": o.overlap_px}
    if o.tiling is not None:
        given = [k for k, v in loose.items() if v is not None]
        if given:
            raise FeaturizeOptionsError(f"give either tiling or {'/'.join(given)}, not both")
        try:
            tiling = Tiling.parse(o.tiling)
        except TilingError as exc:
            raise FeaturizeOptionsError(f"tiling={o.tiling!r}: {exc}") from None
        mpp = tiling.mpp
    else:
        if o.mpp is not None and o.magnification is not None:
            raise FeaturizeOptionsError("give either mpp or magnification, not both")
        mpp = magnification_to_mpp(o.magnification) if o.magnification is not None else o.mpp
        mpp = DEFAULT_MPP if mpp is None else mpp
        tiling = None
    if not (
        isinstance(mpp, int | float) and math.isfinite(mpp) and TILE_MPP_RANGE[0] <= mpp <= TILE_MPP_RANGE[1]
    ):
        given = (
            f"magnification={o.magnification} ({mpp:g} µm/px)"
            if o.magnification is not None
            else f"mpp={mpp}"
        )
        raise FeaturizeOptionsError(
            f"{given}: give the tile resolution in µm/px, within {TILE_MPP_RANGE[0]}–{TILE_MPP_RANGE[1]} "
            "(e.g. 0.5 for 20x)"
        )
    if tiling is None:
        try:
            tiling = Tiling(
                mpp=float(mpp),
                tile_px=DEFAULT_TILE_PX if o.tile_px is None else o.tile_px,
                overlap_px=0 if o.overlap_px is None else o.overlap_px,
            )
        except TilingError as exc:
            raise FeaturizeOptionsError(str(exc)) from None
    return TilingParams(tiling, min_tissue=float(o.min_tissue), tissue_mpp=o.tissue_mpp)
