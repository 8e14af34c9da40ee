"""Bag data sets with known truth for the regress tests."""

from __future__ import annotations

import numpy as np


def planted_bags(n_bags: int, rng: np.random.Generator, *, d: int = 16):
    """Bags where the target lives in a few tiles: 3–12 % of tiles carry a marker (+4 on feature 0) and the
    bag's level ``L`` on feature 1; every other tile is noise. ``y = L``. Mean pooling dilutes the signal.

    Returns ``bags`` (list of (n, d) float32), ``y`` (n_bags,), ``planted`` (list of (n,) bool).
    """
    bags, ys, marks = [], [], []
    for _ in range(n_bags):
        m = int(rng.integers(40, 100))
        level = rng.normal()
        x = rng.normal(size=(m, d)).astype(np.float32)
        k = max(2, int(round(m * rng.uniform(0.03, 0.12))))
        mark = np.zeros(m, bool)
        mark[rng.choice(m, k, replace=False)] = True
        x[mark, 0] += 4.0
        x[mark, 1] = level + 0.1 * rng.normal(size=k)
        bags.append(x)
        ys.append(level)
        marks.append(mark)
    return bags, np.array(ys), marks


def digit_bags(n_bags: int, rng: np.random.Generator, images: np.ndarray, is_nine: np.ndarray):
    """MNIST-bags in regression form (Ilse et al. 2018) on ``sklearn.datasets.load_digits``: bags of 5–20 digit
    images (64 pixel features), label = the fraction of nines. The share of nines per bag is drawn from U(0, 0.6).
    """
    nines, others = np.flatnonzero(is_nine), np.flatnonzero(~is_nine)
    bags, ys, marks = [], [], []
    for _ in range(n_bags):
        m = int(rng.integers(5, 21))
        k = int(rng.binomial(m, rng.uniform(0, 0.6)))
        idx = np.r_[rng.choice(nines, k), rng.choice(others, m - k)]
        rng.shuffle(idx)
        bags.append(images[idx])
        ys.append(k / m)
        marks.append(is_nine[idx])
    return bags, np.array(ys), marks


def mean_bag_auroc(attention: list[np.ndarray], marks: list[np.ndarray]) -> float:
    """Mean over bags (with both classes) of the AUROC of per-tile scores for the marked tiles."""
    from sklearn.metrics import roc_auc_score

    per = [roc_auc_score(m, a) for a, m in zip(attention, marks, strict=True) if 0 < m.sum() < len(m)]
    return float(np.mean(per))
