"""What a run did, slide by slide: :class:`FeaturizeSummary` and its :class:`SlideResult` rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SlideResult:
    """One slide of a run: its status, tiles embedded, seconds, and the reason it failed (or a note about it)."""

    slide_id: str
    status: str  # ok | failed | no_tissue | skipped
    n_tiles: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None


@dataclass
class FeaturizeSummary:
    """What :func:`featurize_cohort` did, slide by slide.

    Attributes
    ----------
    results : list[SlideResult]
        In processing order (sorted slide ids of the shard).
    seconds : float
        Wall time of the run.
    tiles : int
        Tiles embedded in this run (skipped slides excluded).
    """

    store: Path
    tiling: str
    encoder: str
    results: list[SlideResult] = field(default_factory=list)
    seconds: float = 0.0
    tiles: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    #: seconds the main thread waited for tiles (reading is the bottleneck when this is large)
    seconds_waiting_tiles: float = 0.0
    #: seconds it waited for the device's results (CUDA: the encoder is the bottleneck when this is large)
    seconds_waiting_device: float = 0.0
    #: seconds in the encoder's forward passes on a CPU (0 on CUDA, where they run asynchronously); with
    #: ``seconds`` it gives the share of the run the encoder was busy, which a machine's changing speed scales in
    #: both terms alike (the first batch's compiling, when the run compiles, is in it: see ``seconds_compile``)
    seconds_encoding: float = 0.0
    #: whether the encoder ran compiled (``torch.compile``), and the seconds its first batch took, compiling
    #: included (0 when it was compiled by an earlier run in this process)
    compiled: bool = False
    seconds_compile: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def n_failed(self) -> int:
        return self.count("failed")

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "store": str(self.store),
            "tiling": self.tiling,
            "encoder": self.encoder,
            "seconds": round(self.seconds, 3),
            "tiles": self.tiles,
            "tiles_per_s": round(self.tiles_per_s, 2),
            "device": self.device,
            "precision": self.precision,
            "seconds_waiting_tiles": round(self.seconds_waiting_tiles, 3),
            "seconds_waiting_device": round(self.seconds_waiting_device, 3),
            "seconds_encoding": round(self.seconds_encoding, 3),
            "compiled": self.compiled,
            "seconds_compile": round(self.seconds_compile, 3),
            "counts": {s: self.count(s) for s in ("ok", "no_tissue", "failed", "skipped")},
            "slides": [r.__dict__ for r in self.results],
        }
