"""Torch pieces of the bag regressors: padded batches, the inner validation split, optimiser, loss, devices.

Mini-batches of bags are padded to the longest bag in the batch and carried with a boolean mask, so one batched
matmul runs the whole batch and the softmax ignores the padding. Bags are sorted by length within shuffled chunks
so that padding stays small.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import GroupShuffleSplit

from slide2expr.regress._checks import BagInputError, check_device

#: Predict-time budget of padded tiles per batch (bounds memory whatever the bag sizes).
PREDICT_TILE_BUDGET = 65_536
#: Training bags are length-sorted within shuffled chunks of this many batches: little padding, still random.
SORT_CHUNK_BATCHES = 50
#: Fewer groups than this leave no room for an early-stopping validation split.
MIN_VALIDATION_GROUPS = 5
#: The optimisers ``optimizer`` names.
OPTIMIZERS = ("adamw", "adam", "sgd")


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error naming the fix."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BagInputError(f"device={device!r} but CUDA is not available here; use device='cpu' or 'auto'")
    return torch.device(device)


@contextlib.contextmanager
def threads(n: int | None):
    """Set torch's CPU thread count for the block (None: leave it)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class Batch:
    """A padded mini-batch of bags."""

    x: torch.Tensor  # (B, L, d) float32, padded rows zero
    mask: torch.Tensor  # (B, L) bool, false on padding


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
    return Batch(torch.from_numpy(x), torch.from_numpy(mask))


def train_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled mini-batches of bag indices, length-sorted within chunks of :data:`SORT_CHUNK_BATCHES` batches."""
    perm = rng.permutation(len(lengths))
    chunk = max(batch_size * SORT_CHUNK_BATCHES, batch_size)
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s : s + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[k : k + batch_size] for k in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def predict_batches(lengths: np.ndarray, budget: int = PREDICT_TILE_BUDGET) -> list[np.ndarray]:
    """Batches of bag indices sorted by length, each at most ``budget`` padded tiles (at least one bag).

    >>> [b.tolist() for b in predict_batches(np.array([5, 1, 3]), budget=6)]
    [[1, 2], [0]]
    """
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


def inner_split(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A patient-grouped train/validation split for early stopping, or None with fewer than
    :data:`MIN_VALIDATION_GROUPS` groups."""
    uniq = np.unique(groups)
    if fraction <= 0 or len(uniq) < MIN_VALIDATION_GROUPS:
        return None
    n_val = max(1, int(math.ceil(fraction * len(uniq))))
    split = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    tr, va = next(split.split(np.zeros(len(groups)), groups=groups))
    return tr, va


def make_optimizer(
    params, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = False
) -> torch.optim.Optimizer:
    """The optimiser ``name`` (one of :data:`OPTIMIZERS`); ``momentum`` and ``nesterov`` apply to SGD."""
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
    """A CPU copy of ``module``'s weights (to restore the best epoch)."""
    return copy.deepcopy({k: v.detach().cpu() for k, v in module.state_dict().items()})
