"""``Tiling``: the parameters of a tile grid and the store folder named after them, both ways."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: The one spelling of a tiling folder: ``mpp<µm/px>_px<tile>_ov<overlap>``.
_NAME = re.compile(r"mpp(\d+\.\d+)_px(\d+)_ov(\d+)")


class TilingError(ValueError):
    """Tiling parameters that describe no tile grid, or a folder name that is not a tiling's."""


@dataclass(frozen=True)
class Tiling:
    """A tile grid's identity: tiles of ``tile_px`` pixels at ``mpp`` µm/px, neighbours overlapping by
    ``overlap_px`` (pixels at ``mpp``).

    The store keeps each tiling in its own folder, ``tiles/<name>/`` and ``embeddings/<name>/<encoder>/``;
    :attr:`name` and :meth:`parse` turn one into the other, so re-runs with other settings never collide.

    Examples
    --------
    >>> Tiling(mpp=1.0, tile_px=224).name
    'mpp1.00_px224_ov0'
    >>> Tiling.parse("mpp0.2525_px224_ov16")
    Tiling(mpp=0.2525, tile_px=224, overlap_px=16)
    >>> Tiling.parse(Tiling(mpp=0.5, tile_px=256).name) == Tiling(mpp=0.5, tile_px=256)
    True
    """

    mpp: float
    tile_px: int
    overlap_px: int = 0

    def __post_init__(self) -> None:
        for field, value in (("tile_px", self.tile_px), ("overlap_px", self.overlap_px)):
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    object.__setattr__(self, field, int(value))
                else:
                    raise TilingError(f"{field} must be a whole number of pixels; got {value!r}")
        mpp = self.mpp
        if isinstance(mpp, bool) or not isinstance(mpp, int | float) or not math.isfinite(mpp) or mpp <= 0:
            raise TilingError(f"mpp must be a positive number of µm per pixel; got {mpp!r}")
        object.__setattr__(self, "mpp", float(mpp))
        if self.tile_px <= 0 or not 0 <= self.overlap_px < self.tile_px:
            raise TilingError(
                f"tile_px={self.tile_px}, overlap_px={self.overlap_px}: need tile_px > 0 and "
                "0 <= overlap_px < tile_px"
            )

    @property
    def name(self) -> str:
        """The folder name: two decimals of mpp where they say the whole resolution, more where they would not
        (two tilings never share a folder)."""
        text = f"{self.mpp:.2f}"
        if abs(float(text) - self.mpp) > 1e-9:
            text = f"{self.mpp:.6f}".rstrip("0")
        return f"mpp{text}_px{self.tile_px}_ov{self.overlap_px}"

    @property
    def stride_px(self) -> int:
        """Pixels (at ``mpp``) from one tile's corner to its neighbour's."""
        return self.tile_px - self.overlap_px

    @classmethod
    def parse(cls, name: str | Tiling) -> Tiling:
        """The tiling a folder name stands for; :class:`TilingError` for anything that is not one's name."""
        if isinstance(name, Tiling):
            return name
        m = _NAME.fullmatch(str(name))
        if m is not None:
            tiling = cls(mpp=float(m.group(1)), tile_px=int(m.group(2)), overlap_px=int(m.group(3)))
            if tiling.name == name:
                return tiling
        raise TilingError(
            f"{name!r} is not a tiling name: tilings are named mpp<µm/px>_px<tile px>_ov<overlap px>, "
            "e.g. mpp0.50_px224_ov0 (the folders under STORE/tiles/)"
        )

    def as_dict(self) -> dict:
        return {"mpp": self.mpp, "tile_px": self.tile_px, "overlap_px": self.overlap_px}

    def __str__(self) -> str:
        return self.name


def tiling_name(*, mpp: float, tile_px: int, overlap_px: int = 0) -> str:
    """The folder name of a tiling (:attr:`Tiling.name`), e.g. ``mpp0.50_px224_ov0``.

    >>> tiling_name(mpp=1.0, tile_px=224)
    'mpp1.00_px224_ov0'
    >>> tiling_name(mpp=0.2525, tile_px=224)
    'mpp0.2525_px224_ov0'
    """
    return Tiling(mpp=mpp, tile_px=tile_px, overlap_px=overlap_px).name
