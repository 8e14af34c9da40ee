"""Bag-level readouts of a fitted attention-MIL network: what its tile scores say about a bag, beyond the
network's own (attention-weighted) output.

A bulk expression value is a tissue-weighted average over the cells of the sample, so a gene driven by a small
region (a hotspot) is proportional to the *share* of the tissue in that region. An attention network finds such
regions (its attention and tile predictions rank the driver tiles first), but its bag output, a softmax-weighted
average, measures what the attended tiles look like, not how many there are. The readout features here measure
both, per bag and gene:

- ``output``: the network's bag value (Σ attention × tile prediction, the paper's readout);
- ``mean``, ``q50``, ``q90``: the mean, median and 90th percentile of the tile predictions;
- ``frac_pred``, ``frac_att``: the share of the bag's tiles whose prediction, or attention logit, exceeds a
  threshold learned on the training bags (the one of :data:`THRESHOLD_QUANTILES` of the training tiles' scores
  whose share correlates best with the target).

Values are on the target's scale (the fractions in [0, 1]); the stack of :class:`~slide2expr.regress.NestedMIL`
combines them linearly.

>>> import numpy as np
>>> from slide2expr.regress import AttentionMILRegressor
>>> rng = np.random.default_rng(0)
>>> bags = [rng.normal(size=(12, 4)).astype("float32") for _ in range(10)]
>>> net = AttentionMILRegressor(max_epochs=2, min_epochs=0, random_state=0).fit(bags, rng.normal(size=10))
>>> F = readout_features(net, bags, thresholds=learn_thresholds(net, bags, rng.normal(size=(10, 1))))
>>> F.shape  # (bags, genes, features)
(10, 1, 6)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slide2expr.regress._batches import tile_batches

#: The readout features, in the order of the last axis of :func:`readout_features`.
FEATURES = ("output", "mean", "q50", "q90", "frac_pred", "frac_att")
#: Candidate thresholds: these quantiles of the training tiles' scores (prediction or attention logit).
THRESHOLD_QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.98)
#: Tiles whose scores :func:`learn_thresholds` pools whole; a cohort with more is sampled for the candidates.
THRESHOLD_SAMPLE_TILES = 1_000_000


def _tile_scores(model, bags: Sequence[np.ndarray], *, outputs: bool = True):
    """``(outputs (n_bags, n_genes), [(tile_pred, logit) per bag])`` of a fitted network on ``y``'s scale; without
    ``outputs`` the bag outputs are None (the network runs once instead of twice)."""
    scores = model.predict_tiles(bags)
    out = np.asarray(model.predict(bags), dtype=np.float64).reshape(len(bags), -1) if outputs else None
    return out, [(s.tile_pred, s.attention_logit) for s in scores]


def _batched_tile_scores(model, bags: Sequence[np.ndarray], *, outputs: bool = True):
    """:func:`_tile_scores` batch by batch (at most ``TILE_BATCH`` tiles): ``(first bag, outputs, tiles)``."""
    for b in tile_batches([len(x) for x in bags]):
        out, tiles = _tile_scores(model, bags[b.start : b.stop], outputs=outputs)
        yield b.start, out, tiles


def learn_thresholds(model, bags: Sequence[np.ndarray], Y: np.ndarray) -> np.ndarray:
    """Per gene, the prediction and logit thresholds (``(n_genes, 2)``) whose tile shares correlate best (in
    absolute value) with ``Y`` (``(n_bags, n_genes)``) on ``bags``: candidates are :data:`THRESHOLD_QUANTILES` of
    the bags' pooled tile scores (of every tile up to :data:`THRESHOLD_SAMPLE_TILES` tiles; above, of a uniform
    sample of each bag's tiles in proportion to its size, and the shares are counted in a second pass, so memory
    holds one batch of tile scores and the sample)."""
    Y = np.asarray(Y, dtype=np.float64).reshape(len(bags), -1)
    sizes = np.array([len(b) for b in bags])
    whole = int(sizes.sum()) <= THRESHOLD_SAMPLE_TILES
    if whole:
        _, tiles = _tile_scores(model, bags, outputs=False)
        pooled = tiles
    else:
        per = np.maximum(1, np.round(sizes / sizes.sum() * THRESHOLD_SAMPLE_TILES).astype(int))
        rng, pooled = np.random.default_rng(0), []
        for start, _, part in _batched_tile_scores(model, bags, outputs=False):
            for i, t in enumerate(part, start):
                rows = np.sort(rng.choice(sizes[i], size=min(per[i], sizes[i]), replace=False))
                pooled.append(tuple(None if f is None else f[rows] for f in t))
    G = Y.shape[1]
    out = np.full((G, 2), np.inf)
    cands = {
        j: np.quantile(np.concatenate([t[j] for t in pooled]), THRESHOLD_QUANTILES, axis=0)  # (Q, G)
        for j in range(2)
        if not any(t[j] is None for t in pooled)
    }
    shares = {j: np.empty((len(bags), len(THRESHOLD_QUANTILES), G)) for j in cands}
    for start, _, part in [(0, None, tiles)] if whole else _batched_tile_scores(model, bags, outputs=False):
        for i, t in enumerate(part, start):
            for j, c in cands.items():
                shares[j][i] = [(t[j] > q).mean(axis=0) for q in c]
    for j, c in cands.items():
        for g in range(G):
            out[g, j] = c[_best_column(shares[j][:, :, g], Y[:, g]), g]
    return out


def _best_column(X: np.ndarray, y: np.ndarray) -> int:
    """The column of ``X`` with the largest absolute Pearson correlation with ``y`` (NaN rows of ``y`` dropped)."""
    ok = ~np.isnan(y)
    X, y = X[ok], y[ok]
    Xc, yc = X - X.mean(axis=0), y - y.mean()
    den = np.sqrt((Xc**2).sum(axis=0) * (yc**2).sum())
    r = np.divide(np.abs(Xc.T @ yc), den, out=np.zeros(X.shape[1]), where=den > 0)
    return int(np.argmax(r))


def readout_features(model, bags: Sequence[np.ndarray], *, thresholds: np.ndarray) -> np.ndarray:
    """The readout features (:data:`FEATURES`) of a fitted network on ``bags``: ``(n_bags, n_genes, 6)``;
    ``thresholds`` from :func:`learn_thresholds`."""
    F = None
    for start, out, tiles in _batched_tile_scores(model, bags):  # one batch of tile scores at a time
        if F is None:
            F = np.zeros((len(bags), out.shape[1], len(FEATURES)))
        for k, (pred, logit) in enumerate(tiles):
            b = start + k
            F[b, :, 0] = out[k]
            if pred is not None:
                F[b, :, 1] = pred.mean(axis=0)
                F[b, :, 2], F[b, :, 3] = np.quantile(pred, [0.5, 0.9], axis=0)
                F[b, :, 4] = (pred > thresholds[:, 0]).mean(axis=0)
            else:
                F[b, :, 1:5] = out[k][:, None]
            if logit is not None:
                F[b, :, 5] = (logit > thresholds[:, 1]).mean(axis=0)
    return F
