"""What a run did, slide by slide: :class:`FeaturizeSummary` and its :class:`SlideResult` rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slide2expr.contract import SLIDE_STATUSES

#: what a run's summary counts, in the order it lists them: the store's statuses, and slides resume skipped
SUMMARY_STATUSES = (*SLIDE_STATUSES, "skipped")


@dataclass
class SlideResult:
    """One slide of a run: its status, tiles embedded, seconds, and the reason it failed (or a note about it), and
    where its level-0 resolution came from (``metadata`` or ``override``; None when the slide could not be read)."""

    slide_id: str
    status: str  # one of SUMMARY_STATUSES: ok | no_tissue | too_small | failed | skipped
    n_tiles: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None
    mpp_source: str | None = None


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
    mpp_override : float | None
        The run's ``mpp_override``; :attr:`mpp_override_unused` lists the slides it was not used for.
    interrupted, not_started : tuple[str, ...]
        When the run was interrupted (:class:`FeaturizeInterrupted`): the slides it had begun and not written
        (nothing of them is in the store), and those it had not begun.

    Examples
    --------
    >>> s = FeaturizeSummary(store=Path("S"), tiling="mpp0.50_px224_ov0", encoder="uni", mpp_override=0.25)
    >>> s.results += [SlideResult("a", "ok", 10, mpp_source="metadata"), SlideResult("b", "too_small")]
    >>> s.mpp_override_unused, s.count("too_small")
    (['a'], 1)
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
    mpp_override: float | None = None
    interrupted: tuple[str, ...] = ()
    not_started: tuple[str, ...] = ()

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def mpp_override_unused(self) -> list[str]:
        """Slides whose own metadata gave their resolution, so ``mpp_override`` was not used for them (it fills in
        only where the metadata has none or an implausible one)."""
        if self.mpp_override is None:
            return []
        return [r.slide_id for r in self.results if r.mpp_source == "metadata"]

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
            "counts": {s: self.count(s) for s in SUMMARY_STATUSES},
            "mpp_override": self.mpp_override,
            "mpp_override_unused": self.mpp_override_unused,
            "interrupted": list(self.interrupted),
            "not_started": list(self.not_started),
            "slides": [r.__dict__ for r in self.results],
        }


class FeaturizeInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (a ``KeyboardInterrupt``): ``summary`` holds the slides it finished (written and
    complete) and the ones it had begun (:attr:`FeaturizeSummary.interrupted`: nothing of them was written); the
    same run again skips the finished slides and does the rest.

    Examples
    --------
    >>> s = FeaturizeSummary(store=Path("S"), tiling="t", encoder="uni", interrupted=("b",), not_started=("c",))
    >>> s.results.append(SlideResult("a", "ok", 10))
    >>> print(FeaturizeInterrupted(s))
    interrupted: 1 slide finished and kept (a); b interrupted, nothing of it written; 1 not started. Run the same command again to resume: finished slides are skipped.
    """

    def __init__(self, summary: FeaturizeSummary) -> None:
        super().__init__(resume_message(summary))
        self.summary = summary


#: slide ids a message names at most
NAMED_AT_MOST = 5


def _few(ids) -> str:
    ids = list(ids)
    return ", ".join(ids[:NAMED_AT_MOST]) + (
        f" and {len(ids) - NAMED_AT_MOST} more" if len(ids) > NAMED_AT_MOST else ""
    )


def resume_message(summary: FeaturizeSummary) -> str:
    """What an interrupted run did and how to resume it, in one line."""
    done = [r.slide_id for r in summary.results if r.status != "skipped"]
    skipped = summary.count("skipped")
    parts = [
        f"interrupted: {len(done)} slide{'' if len(done) == 1 else 's'} finished and kept"
        + (f" ({_few(done)})" if done else "")
    ]
    if skipped:
        parts.append(f"{skipped} skipped as done before")
    if summary.interrupted:
        parts.append(
            f"{_few(summary.interrupted)} interrupted, nothing of {'it' if len(summary.interrupted) == 1 else 'them'} written"
        )
    if summary.not_started:
        parts.append(f"{len(summary.not_started)} not started")
    return "; ".join(parts) + ". Run the same command again to resume: finished slides are skipped."
