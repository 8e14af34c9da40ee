"""Shared machinery of the torch bag regressors: input checks, padded batches, the training loop.

A *bag* is a ``(n_tiles, d)`` array (float32 or float16); a cohort is a list of bags. Mini-batches of bags are
padded to the longest bag in the batch and carried with a boolean mask, so one batched matmul runs the whole batch
and the softmax ignores the padding. Bags are sorted by length within shuffled chunks so that padding stays small.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

#: Predict-time budget of padded tiles per batch (bounds memory whatever the bag sizes).
PREDICT_TILE_BUDGET = 65_536


class BagInputError(ValueError):
    """Bags or targets that a bag regressor cannot use."""


def check_bags(
    bags,
    *,
    n_features: int | None = None,
    what: str = "bags",
    who: str = "the estimator",
    finite: bool = True,
) -> list[np.ndarray]:
    """Validate ``bags``: a non-empty sequence of non-empty, finite 2-D arrays with one feature dimension.

    Returns the bags as a list of float32 or float16 arrays (no copies of float32/float16 input).
    """
    import scipy.sparse

    if scipy.sparse.issparse(bags):
        raise TypeError(f"{who}: sparse input is not supported; pass a list of dense (n_tiles, d) arrays")
    if isinstance(bags, np.ndarray) and bags.dtype != object:
        if bags.ndim == 3:  # (n_bags, n_tiles, d): equal-size bags
            bags = list(bags)
        else:
            raise BagInputError(
                f"{what} must be a list of (n_tiles, d) arrays, one per bag; got an array of shape {bags.shape}. "
                "Reshape your data: pass cohort.bags (see sql.load_cohort), or wrap a single bag as [bag]."
            )
    try:
        out = list(bags)
    except TypeError as exc:
        raise BagInputError(
            f"{what} must be a list of (n_tiles, d) arrays; got {type(bags).__name__}"
        ) from exc
    if not out:
        raise BagInputError(f"{what} is empty: at least one bag is needed")
    d = n_features
    for i, b in enumerate(out):
        a = np.asarray(b)
        if np.iscomplexobj(a):
            raise BagInputError(f"Complex data not supported: {what}[{i}] has dtype {a.dtype}")
        if a.dtype not in (np.float32, np.float16):
            try:
                a = a.astype(np.float32)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"{what}[{i}] has dtype {a.dtype}; bags hold numeric tile features ({exc})"
                ) from exc
        if a.ndim != 2:
            raise BagInputError(
                f"{what}[{i}] has shape {a.shape}; each bag must be a 2-D (n_tiles, d) array of tile features"
            )
        if a.shape[0] == 0:
            raise BagInputError(f"{what}[{i}] has no tiles; drop empty bags before fitting or predicting")
        if a.shape[1] == 0:
            raise BagInputError(
                f"0 feature(s) (shape=({a.shape[0]}, 0)) while a minimum of 1 is required: {what}[{i}] has no features"
            )
        if d is None:
            d = a.shape[1]
        elif a.shape[1] != d:
            raise BagInputError(
                f"X has {a.shape[1]} features, but {who} is expecting {d} features as input: {what}[{i}] has "
                f"{a.shape[1]} features per tile (were the bags made with another encoder?)"
            )
        if finite and not np.isfinite(a).all():
            raise BagInputError(f"Input X contains NaN or infinity: {what}[{i}] has non-finite tile features")
        out[i] = a
    return out


def check_targets(y, n_bags: int, *, who: str = "the estimator") -> tuple[np.ndarray, bool]:
    """Return ``(Y, was_1d)``: ``Y`` of shape ``(n_bags, n_genes)`` float64 (NaN allowed, masked in the loss)."""
    if y is None:
        raise BagInputError(f"{who} requires y to be passed, but the target y is None")
    if np.iscomplexobj(y):
        raise BagInputError("Complex data not supported: y is complex")
    Y = np.asarray(y, dtype=np.float64)
    was_1d = Y.ndim == 1
    if was_1d:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise BagInputError(f"y must have shape (n_bags,) or (n_bags, n_genes); got {Y.shape}")
    if Y.shape[0] != n_bags:
        raise BagInputError(f"y has {Y.shape[0]} rows but there are {n_bags} bags")
    if np.isinf(Y).any():
        raise BagInputError("y contains infinite values")
    bad = np.isnan(Y).all(axis=0)
    if bad.any():
        raise BagInputError(f"y columns {np.flatnonzero(bad).tolist()} are all NaN: drop those genes")
    return Y, was_1d


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error naming the fix."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BagInputError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise BagInputError(f"device must be 'auto', 'cpu' or 'cuda[:i]'; got {device!r}")
    return torch.device(device)


@dataclass
class Batch:
    x: torch.Tensor  # (B, L, d) float32
    mask: torch.Tensor  # (B, L) bool
    lengths: np.ndarray  # (B,)
    index: np.ndarray  # (B,) bag indices
    tiles: list[np.ndarray] | None  # per bag: the tile rows used (None: all rows, in order)


def make_batch(
    bags: Sequence[np.ndarray],
    index: np.ndarray,
    *,
    max_tiles: int | None,
    rng: np.random.Generator | None,
    tile_fraction: float = 1.0,
    x_mean: np.ndarray | None,
    x_scale: np.ndarray | None,
) -> Batch:
    """Pad bags ``index`` into one ``(B, L, d)`` float32 tensor.

    With ``rng`` (training), each bag is subsampled without replacement to ``min(max_tiles, ceil(tile_fraction ×
    n_tiles))`` tiles (kept in tile order); without it every tile is used.

    Features are standardised with ``x_mean``/``x_scale`` (``(d,)``) when given; padded rows stay zero.
    """
    lengths = np.array([len(bags[i]) for i in index])
    tiles = None
    if rng is not None:
        keep = np.ceil(lengths * float(tile_fraction)).astype(int).clip(1, None)
        if max_tiles is not None:
            keep = np.minimum(keep, int(max_tiles))
        if (keep < lengths).any():
            tiles = []
            for j in range(len(index)):
                if keep[j] < lengths[j]:
                    tiles.append(np.sort(rng.permutation(lengths[j])[: keep[j]]))
                    lengths[j] = keep[j]
                else:
                    tiles.append(None)
    L = int(lengths.max())
    d = bags[index[0]].shape[1]
    x = np.zeros((len(index), L, d), dtype=np.float32)
    for j, i in enumerate(index):
        rows = bags[i] if tiles is None or tiles[j] is None else bags[i][tiles[j]]
        x[j, : lengths[j]] = rows
        if x_mean is not None:
            x[j, : lengths[j]] -= x_mean
            x[j, : lengths[j]] *= x_scale
    mask = np.arange(L)[None, :] < lengths[:, None]
    return Batch(torch.from_numpy(x), torch.from_numpy(mask), lengths, np.asarray(index), tiles)


def train_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled mini-batches of bag indices, length-sorted within chunks of ``50 × batch_size`` bags."""
    perm = rng.permutation(len(lengths))
    chunk = max(batch_size * 50, batch_size)
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def predict_batches(lengths: np.ndarray, budget: int = PREDICT_TILE_BUDGET) -> list[np.ndarray]:
    """Batches of bag indices sorted by length, each at most ``budget`` padded tiles (at least one bag)."""
    order = np.argsort(lengths, kind="stable")
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > budget:
            batches.append(np.array(cur))
            cur = []
        cur.append(i)
    if cur:
        batches.append(np.array(cur))
    return batches


def sample_stats(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and 1/std (1 where the std is ~0) of ``sample`` (``(n, d)`` tiles), float32."""
    mean = sample.mean(axis=0, dtype=np.float64)
    std = sample.std(axis=0, dtype=np.float64)
    scale = np.where(std > 1e-8, 1.0 / np.maximum(std, 1e-8), 1.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def tile_sample(bags: Sequence[np.ndarray], rng: np.random.Generator, max_rows: int = 50_000) -> np.ndarray:
    """All tiles as one float32 array, or a random subsample of about ``max_rows`` tiles in proportion to bag size."""
    lengths = np.array([len(b) for b in bags])
    total = int(lengths.sum())
    if total <= max_rows:
        sample = np.concatenate([np.asarray(b, dtype=np.float32) for b in bags])
    else:
        per = np.maximum(1, np.round(lengths / total * max_rows).astype(int))
        sample = np.concatenate(
            [
                np.asarray(b[np.sort(rng.choice(len(b), size=min(k, len(b)), replace=False))], np.float32)
                for b, k in zip(bags, per, strict=True)
            ]
        )
    return sample


def pca_basis(
    sample: np.ndarray, n_components: int, *, x_mean: np.ndarray | None, x_scale: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading principal axes of ``sample`` (``(n, d)`` tiles), standardised with ``x_mean``/``x_scale`` if given.

    Returns ``(mean, components, explained_variance)``: ``mean`` ``(d,)`` is the (standardised) sample mean that is
    subtracted before projecting, ``components`` ``(d, k)`` the unit principal axes (sign fixed so that the largest
    loading of each is positive), ``explained_variance`` ``(k,)`` the variance along each, with
    ``k = min(n_components, n, d)``.
    """
    x = np.asarray(sample, dtype=np.float64)
    if x_mean is not None:
        x = (x - x_mean) * x_scale
    mean = x.mean(axis=0)
    x = x - mean
    cov = x.T @ x / max(len(x) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    k = int(min(n_components, x.shape[0], x.shape[1]))
    order = np.argsort(evals)[::-1][:k]
    comps, evals = evecs[:, order], np.clip(evals[order], 0.0, None)
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    return mean.astype(np.float32), comps.astype(np.float32), evals.astype(np.float32)


def inner_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A patient-grouped train/validation split for early stopping, or None when too few groups (< 5)."""
    uniq = np.unique(groups)
    if fraction <= 0 or len(uniq) < 5:
        return None
    n_val = max(1, int(math.ceil(fraction * len(uniq))))
    split = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    tr, va = next(split.split(np.zeros(len(groups)), groups=groups))
    return tr, va


def make_optimizer(params, *, name: str, lr: float, weight_decay: float, momentum: float, nesterov: bool):
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    raise BagInputError(f"optimizer must be 'adamw', 'adam' or 'sgd'; got {name!r}")


def masked_mse(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the non-NaN targets (``valid``), ``(B, G)`` each."""
    diff = torch.where(valid, pred.float() - target, torch.zeros_like(target))
    return (diff * diff).sum() / valid.sum().clamp_min(1)


def snapshot(module: torch.nn.Module) -> dict:
    return copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
