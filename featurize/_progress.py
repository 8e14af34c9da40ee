"""Progress bars of a run: the cohort (slides) and the slide being embedded (tiles, tiles/s)."""

from __future__ import annotations

import time


class Progress:
    """Two rich bars (cohort: slides; slide: tiles with tiles/s), or nothing when disabled."""

    def __init__(self, *, enabled: bool, n_slides: int) -> None:
        self.p = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.p = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.p.start()
        self.cohort = self.p.add_task("cohort", total=n_slides, rate="")
        self.slide = self.p.add_task("slide", total=0, rate="")
        self.t0 = time.perf_counter()
        self.n = 0

    def start_slide(self, slide_id: str, n_tiles: int) -> None:
        if self.p is not None:
            self.p.reset(self.slide, total=max(n_tiles, 1), description=f"{slide_id}", rate="")
            self.ts = time.perf_counter()

    def advance_tiles(self, k: int) -> None:
        if self.p is not None:
            self.n += k
            el = time.perf_counter() - self.ts
            task = self.p.tasks[self.slide]
            rate = (task.completed + k) / el if el > 0 else 0.0
            self.p.update(self.slide, advance=k, rate=f"{rate:7.1f} tiles/s")
            total = self.n / max(time.perf_counter() - self.t0, 1e-9)
            self.p.update(self.cohort, rate=f"{total:7.1f} tiles/s")

    def end_slide(self) -> None:
        if self.p is not None:
            self.p.advance(self.cohort)

    def close(self) -> None:
        if self.p is not None:
            self.p.stop()
