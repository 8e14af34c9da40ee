"""The training loop and inference of one bag network: mini-batches, masked MSE, early stopping on an inner
validation split, the best epoch's weights restored.

Everything here works on the z-scored target scale and on the network's inputs (tile features after the fitted
:class:`~slide2expr.regress.TileProjection`, with any per-batch standardisation given as ``x_mean``/``x_scale``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from slide2expr.regress._torchbag import (
    autocast,
    make_batch,
    masked_mse,
    predict_batches,
    snapshot,
    threads,
    train_batches,
)


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train_network` iterates: the estimator's training parameters of the same names."""

    batch_size: int
    max_epochs: int
    patience: int | None
    min_epochs: int
    max_tiles: int | None
    tile_fraction: float
    n_threads: int | None
    verbose: bool = False
    name: str = "network"

    @classmethod
    def from_params(cls, params: Mapping, *, name: str) -> LoopSettings:
        """The settings of the same names in an estimator's ``get_params()``."""
        return cls(
            **{f.name: params[f.name] for f in fields(cls) if f.name in params and f.name != "name"},
            name=name,
        )


@dataclass
class NetworkInputs:
    """The training set as the network sees it: bags, z-scored targets ``Z`` ``(n_bags, n_genes)`` (NaN where
    missing), the per-batch standardisation, and the inner split (``val`` None: no early stopping)."""

    bags: Sequence[np.ndarray]
    Z: np.ndarray
    x_mean: np.ndarray | None
    x_scale: np.ndarray | None
    train: np.ndarray
    val: np.ndarray | None


@dataclass
class TrainedNetwork:
    """The fitted network (on CPU, eval mode), its per-epoch ``history`` and the epoch whose weights it holds."""

    module: nn.Module
    history: list[dict]
    best_epoch: int


def train_network(
    build: Callable[[], nn.Module],
    optimizer: Callable[[object], torch.optim.Optimizer],
    data: NetworkInputs,
    *,
    settings: LoopSettings,
    seed: int,
    rng: np.random.Generator,
    device: torch.device,
    step_hook: Callable[[nn.Module, np.random.Generator], None] | None = None,
) -> TrainedNetwork:
    """Build the network under ``torch.manual_seed(seed)`` (the global torch generator is restored afterwards) and
    train it; batches and tile subsamples draw from ``rng``, and ``step_hook`` runs before each step.

    Stops after ``patience`` epochs without a lower validation loss, but never before ``min_epochs`` epochs, and
    restores the weights of the epoch with the lowest validation loss.
    """
    Zt = torch.from_numpy(np.nan_to_num(data.Z)).float()
    valid = torch.from_numpy(~np.isnan(data.Z))
    lengths = np.array([len(b) for b in data.bags])
    history: list[dict] = []
    best, best_state, best_epoch, stale = np.inf, None, -1, 0
    fork = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    with fork, threads(settings.n_threads):
        torch.manual_seed(seed)
        module = build().to(device)
        opt = optimizer(module.parameters())
        for epoch in range(int(settings.max_epochs)):
            t_epoch = time.perf_counter()
            loss = _train_epoch(module, opt, data, Zt, valid, lengths, settings, rng, device, step_hook)
            rec = {"epoch": epoch, "train_loss": loss}
            if data.val is not None:
                rec["val_loss"] = _validation_loss(module, data, device, settings.n_threads)
                if rec["val_loss"] < best:
                    best, best_state, best_epoch, stale = rec["val_loss"], snapshot(module), epoch, 0
                else:
                    stale += 1
            rec["seconds"] = time.perf_counter() - t_epoch
            history.append(rec)
            if settings.verbose:
                print(f"[{settings.name}] " + " ".join(f"{k}={v:.4g}" for k, v in rec.items()))
            if data.val is not None and stale >= int(settings.patience) and epoch + 1 >= settings.min_epochs:
                break
    if best_state is not None:
        module.load_state_dict(best_state)
    best_epoch = best_epoch if best_state is not None else len(history) - 1
    return TrainedNetwork(module.cpu().eval(), history, best_epoch)


def _train_epoch(module, opt, data, Zt, valid, lengths, settings, rng, device, step_hook) -> float:
    """One pass over the training bags; the mean training loss."""
    module.train()
    tot, cnt = 0.0, 0
    tr = data.train
    for idx in train_batches(lengths[tr], int(settings.batch_size), rng):
        idx = tr[idx]
        batch = make_batch(
            data.bags,
            idx,
            max_tiles=settings.max_tiles,
            rng=rng,
            tile_fraction=settings.tile_fraction,
            x_mean=data.x_mean,
            x_scale=data.x_scale,
        )
        x = batch.x.to(device, non_blocking=True)
        mask = batch.mask.to(device, non_blocking=True)
        if step_hook is not None:
            step_hook(module, rng)
        with autocast(device):
            pred = module(x, mask)[0]
        loss = masked_mse(pred, Zt[idx].to(device), valid[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tot += float(loss.detach()) * len(idx)
        cnt += len(idx)
    return tot / max(cnt, 1)


def _validation_loss(module, data: NetworkInputs, device, n_threads) -> float:
    va = data.val
    vpred = bag_outputs(
        module,
        [data.bags[i] for i in va],
        n_outputs=data.Z.shape[1],
        x_mean=data.x_mean,
        x_scale=data.x_scale,
        device=device,
        n_threads=n_threads,
    )
    vz, vm = data.Z[va], ~np.isnan(data.Z[va])
    return float(np.mean((vpred[vm] - vz[vm]) ** 2))


def network_outputs(
    module: nn.Module,
    bags: Sequence[np.ndarray],
    *,
    x_mean: np.ndarray | None,
    x_scale: np.ndarray | None,
    device: torch.device,
    n_threads: int | None,
    tiles: bool,
) -> Iterator[tuple[int, tuple]]:
    """Yield ``(bag_index, outputs)`` per bag in eval mode over all tiles, as numpy arrays on the z-scored scale:
    ``(bag,)``, or with ``tiles`` ``(bag, attention, logits | None, tile | None)``, each ``(n_tiles, n_genes)``."""
    lengths = np.array([len(b) for b in bags])
    module.eval()
    with torch.inference_mode(), threads(n_threads):
        for idx in predict_batches(lengths):
            batch = make_batch(bags, idx, max_tiles=None, rng=None, x_mean=x_mean, x_scale=x_scale)
            with autocast(device):
                bag, att, logits, tile = module(batch.x.to(device), batch.mask.to(device))
            bag = bag.float().cpu().numpy()
            if not tiles:
                for j, i in enumerate(idx):
                    yield i, (bag[j],)
                continue
            att = att.float().cpu().numpy()
            logits = None if logits is None else logits.float().cpu().numpy()
            tile = None if tile is None else tile.float().cpu().numpy()
            for j, i in enumerate(idx):
                n = lengths[i]
                yield (
                    i,
                    (
                        bag[j],
                        att[j, :n],
                        None if logits is None else logits[j, :n],
                        None if tile is None else tile[j, :n],
                    ),
                )


def bag_outputs(module: nn.Module, bags: Sequence[np.ndarray], *, n_outputs: int, **kwargs) -> np.ndarray:
    """``(n_bags, n_outputs)`` bag outputs of :func:`network_outputs` (z-scored scale)."""
    out = np.empty((len(bags), n_outputs))
    for i, (b,) in network_outputs(module, bags, tiles=False, **kwargs):
        out[i] = b
    return out
