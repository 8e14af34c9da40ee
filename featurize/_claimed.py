"""The local engine's claims: every slide a run will featurize is claimed first, so that runs sharing a store (other
local runs, SLURM shards, a Ray run) never write the same slide (see :mod:`slide2expr.contract._claims`)."""

from __future__ import annotations

import threading

from slide2expr.contract import DEFAULT_TTL_S, Claim, acquire_claim, claim_path, read_claim
from slide2expr.featurize._inputs import SlideInput
from slide2expr.featurize._summary import FeaturizeSummary, SlideResult
from slide2expr.featurize._write import RunConfig, skip_if_done


class RunClaims:
    """The claims of one run: taken before it starts (:meth:`take`), renewed on one thread, released at the end.

    A slide another live writer holds is left to it (recorded ``skipped``, the note naming the holder); so is one
    that writer finished between this run's resume check and its claim.
    """

    def __init__(self, cfg: RunConfig, *, force: bool, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.cfg, self.force, self.ttl_s = cfg, force, ttl_s
        self.held: list[Claim] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self, slides: list[SlideInput], summary: FeaturizeSummary) -> list[SlideInput]:
        """Claim ``slides``; return those this run holds and still has to do (the rest go into ``summary``)."""
        cfg, mine = self.cfg, []
        for s in slides:
            path = claim_path(cfg.store, cfg.tiling.name, cfg.encoder_name, s.slide_id)
            claim = acquire_claim(path, ttl_s=self.ttl_s)
            if claim is None:
                holder = read_claim(path)
                who = holder.describe() if holder is not None else "another writer"
                summary.results.append(SlideResult(s.slide_id, "skipped", note=f"taken by {who}"))
                continue
            row = None if self.force else skip_if_done(s, cfg)
            if row is not None:  # finished by another writer meanwhile
                claim.release()
                summary.results.append(
                    SlideResult(s.slide_id, "skipped", mpp_source=row.column("mpp_source")[0].as_py())
                )
                continue
            self.held.append(claim)
            mine.append(s)
        if self.held:
            self._thread = threading.Thread(target=self._renew, name="slide2expr-claims", daemon=True)
            self._thread.start()
        return mine

    def tidy(self, done: list[SlideInput]) -> None:
        """Remove the claims left on ``done`` slides (found finished) by writers that died before releasing them.

        Only a dead or lapsed holder's claim is taken over (then released); a live writer's stays. One listing of
        the claims folder, so a resumed run does not read a claim per finished slide.
        """
        if not done:
            return
        cfg = self.cfg
        folder = claim_path(cfg.store, cfg.tiling.name, cfg.encoder_name, done[0].slide_id).parent
        try:
            present = {p.name.removesuffix(".claim") for p in folder.glob("*.claim")}
        except OSError:
            return
        for s in done:
            if s.slide_id not in present:
                continue
            path = claim_path(cfg.store, cfg.tiling.name, cfg.encoder_name, s.slide_id)
            try:
                claim = acquire_claim(path, ttl_s=self.ttl_s)
                if claim is not None:
                    claim.release()
            except OSError:
                continue  # left for the next run; it lapses after its lifetime

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            for c in self.held:
                try:
                    c.renew()
                except OSError:
                    continue  # renewed at the next round; a lease outlives two missed renewals

    def release(self) -> None:
        """Stop renewing and delete every claim still held."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for c in self.held:
            try:
                c.release()
            except OSError:
                continue  # it lapses after its lifetime
        self.held = []
