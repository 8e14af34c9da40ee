"""Attention-MIL (Graziani et al. 2022; Ilse et al. 2018) and HE2RNA-style bag regressors in torch.

Both are scikit-learn estimators over *bags*: ``fit(bags, y)`` with ``bags`` a list of ``(n_tiles, d)`` arrays and
``y`` of shape ``(n_bags,)`` or ``(n_bags, n_genes)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from slide2expr.regress._torchbag import (
    BagInputError,
    check_bags,
    check_targets,
    inner_split,
    make_batch,
    make_optimizer,
    masked_mse,
    pca_basis,
    predict_batches,
    resolve_device,
    sample_stats,
    snapshot,
    tile_sample,
    train_batches,
)


class TileScores(NamedTuple):
    """What an attention model says about each tile of one bag, each ``(n_tiles, n_genes)`` float32."""

    attention: np.ndarray
    tile_pred: np.ndarray | None
    attention_logit: np.ndarray | None


# ---- modules -------------------------------------------------------------------------------------------------


class _MILNet(nn.Module):
    """Per-tile hidden layer, one attention branch per gene, instance or embedding pooling.

    ``forward(x (B, L, d), mask (B, L))`` → ``(bag (B, G), attention (B, L, G), logits (B, L, G), tile (B, L, G) |
    None)``; everything on the z-scored target scale.
    """

    def __init__(
        self,
        d: int,
        n_genes: int,
        *,
        mode: str,
        attention: str,
        hidden: int,
        att_dim: int,
        dropout: float,
        clamp: float | None,
    ):
        super().__init__()
        self.mode, self.gated, self.clamp = mode, attention == "gated", clamp
        self.embed = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.att_v = nn.Linear(hidden, att_dim)
        self.att_u = nn.Linear(hidden, att_dim) if self.gated else None
        self.att_w = nn.Linear(att_dim, n_genes)
        if mode == "instance":
            self.tile_head = nn.Linear(hidden, n_genes)  # p_t = w_g · h_t + b_g
        else:  # Ilse et al.: pooled embedding per gene → shared hidden layer → per-gene output
            self.bag_hidden = nn.Sequential(nn.Linear(hidden, att_dim), nn.ReLU(), nn.Dropout(dropout))
            self.bag_w = nn.Parameter(torch.empty(n_genes, att_dim))
            self.bag_b = nn.Parameter(torch.zeros(n_genes))
            nn.init.normal_(self.bag_w, std=att_dim**-0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        h = self.embed(x)  # (B, L, E)
        a = torch.tanh(self.att_v(h))
        if self.att_u is not None:
            a = a * torch.sigmoid(self.att_u(h))
        logits = self.att_w(a).float()  # (B, L, G)
        logits = logits.masked_fill(~mask[..., None], float("-inf"))
        att = torch.softmax(logits, dim=1)
        if self.mode == "instance":
            tile = self.tile_head(h).float()  # (B, L, G)
            bag = (att * tile.masked_fill(~mask[..., None], 0.0)).sum(dim=1)
        else:
            tile = None
            z = torch.einsum("blg,ble->bge", att.to(h.dtype), h)  # (B, G, E)
            bag = (self.bag_hidden(z).float() * self.bag_w).sum(-1) + self.bag_b
        if self.clamp is not None:
            bag = bag.clamp(-self.clamp, self.clamp)
        return bag, att, logits, tile


class _HE2RNANet(nn.Module):
    """Per-tile MLP; the bag value is the mean of the top-k tile predictions (averaged over ``ks``)."""

    def __init__(self, d: int, n_genes: int, *, hidden: tuple[int, ...], dropout: float, ks: tuple[int, ...]):
        super().__init__()
        layers, prev = [], d
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.ReLU(), nn.Dropout(dropout)]
            prev = width
        layers.append(nn.Linear(prev, n_genes))
        self.mlp = nn.Sequential(*layers)
        self.ks = tuple(int(k) for k in ks)
        self.k_train: int | None = None  # set per training step

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        tile = self.mlp(x).float()  # (B, L, G)
        ks = (self.k_train,) if (self.training and self.k_train is not None) else self.ks
        lengths = mask.sum(dim=1)  # (B,)
        filled = tile.masked_fill(~mask[..., None], float("-inf"))
        srt, order = torch.sort(filled, dim=1, descending=True)
        srt = srt.masked_fill(torch.isinf(srt), 0.0)
        csum = torch.cumsum(srt, dim=1)  # (B, L, G)
        L = tile.shape[1]
        bag = torch.zeros(tile.shape[0], tile.shape[2], device=tile.device)
        weight_sorted = torch.zeros_like(tile)
        rank = torch.arange(L, device=tile.device)[None, :, None]
        for k in ks:
            keff = torch.clamp(lengths, max=k).clamp_min(1)  # (B,)
            idx = (keff - 1).view(-1, 1, 1).expand(-1, 1, tile.shape[2])
            bag = bag + csum.gather(1, idx).squeeze(1) / keff[:, None]
            if not self.training:
                weight_sorted = weight_sorted + (rank < keff.view(-1, 1, 1)).float() / keff.view(-1, 1, 1)
        bag = bag / len(ks)
        att = torch.zeros_like(tile).scatter_(1, order, weight_sorted / len(ks))
        return bag, att, None, tile


# ---- estimators ----------------------------------------------------------------------------------------------


def _check_number(who: str, name: str, value, *, integer: bool = False, optional: bool = False) -> None:
    """Raise :class:`BagInputError` naming ``name`` unless ``value`` is an integer / a number (or None)."""
    if value is None and optional:
        return
    types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, types):
        kind = "an integer" if integer else "a number"
        raise BagInputError(f"{who}: {name} must be {kind}{' or None' if optional else ''}; got {value!r}")


class _TorchBagRegressor(RegressorMixin, BaseEstimator):
    """The training loop shared by :class:`AttentionMILRegressor` and :class:`HE2RNARegressor`."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        tags.non_deterministic = self._device_is_cuda()
        return tags

    def _device_is_cuda(self) -> bool:
        dev = getattr(self, "device", "cpu")
        return dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())

    # subclasses implement
    def _build(self, d: int, n_genes: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    #: Parameters checked for type before training: integers, numbers, and either of them or None.
    _INTEGER_PARAMS = ("batch_size", "max_epochs")
    _NUMBER_PARAMS = ("lr", "weight_decay", "dropout", "validation_fraction", "tile_fraction")
    _OPTIONAL_INTEGER_PARAMS = ("patience", "max_tiles", "n_threads")
    _OPTIONAL_NUMBER_PARAMS: tuple[str, ...] = ()

    def _check_params(self) -> None:
        who = type(self).__name__
        for name in self._INTEGER_PARAMS:
            _check_number(who, name, getattr(self, name), integer=True)
        for name in self._NUMBER_PARAMS:
            _check_number(who, name, getattr(self, name))
        for name in self._OPTIONAL_INTEGER_PARAMS:
            _check_number(who, name, getattr(self, name), integer=True, optional=True)
        for name in self._OPTIONAL_NUMBER_PARAMS:
            _check_number(who, name, getattr(self, name), optional=True)
        for name in ("lr", "batch_size", "max_epochs"):
            if not getattr(self, name) > 0:
                raise BagInputError(f"{type(self).__name__}: {name} must be > 0; got {getattr(self, name)!r}")
        if self.max_tiles is not None and self.max_tiles < 1:
            raise BagInputError(
                f"{type(self).__name__}: max_tiles must be None or ≥ 1; got {self.max_tiles!r}"
            )
        if not 0 < self.tile_fraction <= 1:
            raise BagInputError(
                f"{type(self).__name__}: tile_fraction must be in (0, 1]; got {self.tile_fraction!r}"
            )
        if not 0 <= self.validation_fraction < 1:
            raise BagInputError(
                f"{type(self).__name__}: validation_fraction must be in [0, 1); got {self.validation_fraction!r}"
            )

    def _train_step_hook(self, module: nn.Module, rng: np.random.Generator) -> None:
        """Called before each training step (HE2RNA draws its k here)."""

    def fit(self, bags, y, groups=None):
        """Fit on ``bags`` (list of ``(n_tiles, d)`` arrays) and ``y`` (``(n_bags,)`` or ``(n_bags, n_genes)``).

        Parameters
        ----------
        bags
            List of ``(n_tiles, d)`` float arrays, one per bag.
        y
            ``(n_bags,)`` or ``(n_bags, n_genes)`` targets; NaN entries are left out of the loss.
        groups
            ``(n_bags,)`` patient of each bag, for the inner grouped validation split used for early stopping.
            Without it every bag is its own group.

        Returns
        -------
        self
        """
        bags = check_bags(bags, who=type(self).__name__)
        Y, was_1d = check_targets(y, len(bags), who=type(self).__name__)
        self._check_params()
        n, d = len(bags), bags[0].shape[1]
        groups = np.arange(n) if groups is None else np.asarray(groups)
        if len(groups) != n:
            raise BagInputError(f"groups has {len(groups)} entries but there are {n} bags")
        seed = int(check_random_state(self.random_state).randint(0, 2**31 - 1))
        self.n_features_in_ = d
        self.n_outputs_ = Y.shape[1]
        self._y_was_1d = was_1d
        self.y_mean_ = np.nanmean(Y, axis=0)
        std = np.nanstd(Y, axis=0)
        self.y_scale_ = np.where(std > 1e-12, std, 1.0)
        Z = (Y - self.y_mean_) / self.y_scale_
        rng = np.random.default_rng(seed)
        k_pca = getattr(self, "pca_components", None)
        sample = tile_sample(bags, rng) if (self.standardize or k_pca) else None
        if self.standardize:
            self.x_mean_, self.x_scale_ = sample_stats(sample)
        else:
            self.x_mean_, self.x_scale_ = None, None
        if k_pca:
            if k_pca > d:
                raise BagInputError(
                    f"{type(self).__name__}: pca_components={k_pca} exceeds the {d} features per tile; "
                    f"use at most {d}, or None for no projection"
                )
            pmean, comps, evals = pca_basis(sample, k_pca, x_mean=self.x_mean_, x_scale=self.x_scale_)
            proj = comps if self.x_scale_ is None else comps * self.x_scale_[:, None]
            shift = pmean if self.x_mean_ is None else self.x_mean_ * self.x_scale_ + pmean
            self.x_projection_ = proj.astype(np.float32)
            self.x_offset_ = (-(shift @ comps)).astype(np.float32)
            self.pca_explained_variance_ = evals
        else:
            self.x_projection_ = self.x_offset_ = self.pca_explained_variance_ = None
        bags, x_mean, x_scale = self._network_inputs(bags)
        d_net = bags[0].shape[1]
        split = inner_split(groups, self.validation_fraction, seed) if self.patience else None
        tr, va = (np.arange(n), None) if split is None else split
        device = resolve_device(self.device)
        self.device_ = str(device)
        cuda = device.type == "cuda"
        lengths = np.array([len(b) for b in bags])
        Zt = torch.from_numpy(np.nan_to_num(Z)).float()
        valid = torch.from_numpy(~np.isnan(Z))
        history = []
        t0 = time.perf_counter()
        fork = torch.random.fork_rng(devices=[device.index or 0] if cuda else [])
        with fork, _threads(self.n_threads):
            torch.manual_seed(seed)
            module = self._build(d_net, Y.shape[1]).to(device)
            opt = make_optimizer(
                module.parameters(),
                name=self.optimizer,
                lr=self.lr,
                weight_decay=self.weight_decay,
                momentum=getattr(self, "momentum", 0.9),
                nesterov=getattr(self, "nesterov", False),
            )
            best, best_state, best_epoch, stale = np.inf, None, -1, 0
            for epoch in range(int(self.max_epochs)):
                t_epoch = time.perf_counter()
                module.train()
                tot, cnt = 0.0, 0
                for idx in train_batches(lengths[tr], int(self.batch_size), rng):
                    idx = tr[idx]
                    batch = make_batch(
                        bags,
                        idx,
                        max_tiles=self.max_tiles,
                        rng=rng,
                        tile_fraction=self.tile_fraction,
                        x_mean=x_mean,
                        x_scale=x_scale,
                    )
                    x = batch.x.to(device, non_blocking=True)
                    mask = batch.mask.to(device, non_blocking=True)
                    self._train_step_hook(module, rng)
                    with _autocast(device):
                        pred = module(x, mask)[0]
                    loss = masked_mse(pred, Zt[idx].to(device), valid[idx].to(device))
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot += float(loss.detach()) * len(idx)
                    cnt += len(idx)
                rec = {"epoch": epoch, "train_loss": tot / max(cnt, 1)}
                if va is not None:
                    vpred = self._bag_outputs(module, [bags[i] for i in va], device, prepared=True)
                    vz, vm = Z[va], ~np.isnan(Z[va])
                    vloss = float(np.mean((vpred[vm] - vz[vm]) ** 2))
                    rec["val_loss"] = vloss
                    if vloss < best - 1e-6:
                        best, best_state, best_epoch, stale = vloss, snapshot(module), epoch, 0
                    else:
                        stale += 1
                rec["seconds"] = time.perf_counter() - t_epoch
                history.append(rec)
                if self.verbose:
                    print(f"[{type(self).__name__}] " + " ".join(f"{k}={v:.4g}" for k, v in rec.items()))
                # stop after `patience` epochs without improvement, but never before 2 × patience epochs
                if va is not None and stale >= int(self.patience) and epoch + 1 >= 2 * int(self.patience):
                    break
        if best_state is not None:
            module.load_state_dict(best_state)
        self.module_ = module.cpu().eval()
        self.history_ = history
        self.n_epochs_ = len(history)
        self.best_epoch_ = best_epoch if best_state is not None else len(history) - 1
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    # -- inference -----------------------------------------------------------------------------------------------

    def _network_inputs(self, bags: Sequence[np.ndarray], *, project: bool = True):
        """``(bags, x_mean, x_scale)`` for :func:`make_batch`: projected bags when fitted with PCA, else as given.

        ``project=False`` returns ``bags`` unchanged (already projected) with the matching ``x_mean``/``x_scale``.
        """
        proj = getattr(self, "x_projection_", None)
        if proj is None:
            return bags, self.x_mean_, self.x_scale_
        if not project:
            return bags, None, None
        return [np.asarray(b, dtype=np.float32) @ proj + self.x_offset_ for b in bags], None, None

    def _iter_outputs(
        self,
        module: nn.Module,
        bags: Sequence[np.ndarray],
        device: torch.device,
        *,
        tiles: bool,
        prepared: bool = False,
    ):
        """Yield ``(bag_index, outputs)`` per bag; eval mode, all tiles, z-scored scale, numpy arrays."""
        projected, x_mean, x_scale = self._network_inputs(bags, project=not prepared)
        bags = bags if prepared else projected
        lengths = np.array([len(b) for b in bags])
        module.eval()
        with torch.inference_mode(), _threads(self.n_threads):
            for idx in predict_batches(lengths):
                batch = make_batch(bags, idx, max_tiles=None, rng=None, x_mean=x_mean, x_scale=x_scale)
                with _autocast(device):
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

    def _bag_outputs(self, module, bags, device, *, prepared: bool = False) -> np.ndarray:
        out = np.empty((len(bags), self.n_outputs_ if hasattr(self, "n_outputs_") else 1))
        for i, (b,) in self._iter_outputs(module, bags, device, tiles=False, prepared=prepared):
            out[i] = b
        return out

    def _prepare_predict(self, bags):
        check_is_fitted(self, "module_")
        bags = check_bags(bags, n_features=self.n_features_in_, who=type(self).__name__)
        device = resolve_device(self.device)
        return bags, device, self.module_.to(device)

    def predict(self, bags) -> np.ndarray:
        """Bag predictions: ``(n_bags,)`` when fitted on 1-D ``y``, else ``(n_bags, n_genes)``, on ``y``'s scale."""
        bags, device, module = self._prepare_predict(bags)
        try:
            z = self._bag_outputs(module, bags, device)
        finally:
            self.module_ = module.cpu()
        pred = z * self.y_scale_ + self.y_mean_
        return pred[:, 0] if self._y_was_1d else pred

    def _tile_outputs(self, bags) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]]:
        """Per bag ``(attention, logits | None, tile_pred | None)``, each ``(n_tiles, n_genes)`` float32."""
        bags, device, module = self._prepare_predict(bags)
        out: list = [None] * len(bags)
        try:
            for i, (_, att, logits, tile) in self._iter_outputs(module, bags, device, tiles=True):
                if tile is not None:
                    tile = (tile * self.y_scale_ + self.y_mean_).astype(np.float32)
                out[i] = (att.astype(np.float32), None if logits is None else logits.astype(np.float32), tile)
        finally:
            self.module_ = module.cpu()
        return out

    def predict_tiles(self, bags) -> list[TileScores]:
        """Per-tile attention and per-tile predictions of each bag.

        Returns
        -------
        list of :class:`TileScores`, one per bag: ``attention`` is ``(n_tiles, n_genes)`` float32, softmax-normalised
        over the bag's tiles per gene (columns sum to 1); ``tile_pred`` is ``(n_tiles, n_genes)`` float32 on ``y``'s
        scale, or None for a mode without per-tile predictions (``mode="embedding"``); ``attention_logit`` is the
        attention before the softmax, or None for a model without one.
        """
        return [TileScores(att, tile, logits) for att, logits, tile in self._tile_outputs(bags)]


@contextlib.contextmanager
def _threads(n: int | None):
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


@contextlib.contextmanager
def _autocast(device: torch.device):
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield


class AttentionMILRegressor(_TorchBagRegressor):
    """Attention-based multiple-instance regression of bag-level targets (e.g. bulk gene expression).

    ``mode="instance"`` (Graziani et al. 2022): each tile gets a hidden representation ``h_t = ReLU(W x_t)``, a
    prediction ``p_t = w_g · h_t`` and an attention weight ``a_t = softmax_t(w_a,g · tanh(V h_t) [⊙ σ(U h_t)])`` per
    gene ``g``; the bag prediction is ``Σ_t a_t p_t``. ``mode="embedding"`` (Ilse et al. 2018): the attention pools the
    hidden representations per gene and a head maps the pooled embedding to the bag prediction.

    Targets are z-scored per gene in ``fit`` (NaN targets are left out of the loss); tile features are standardised
    with training statistics when ``standardize``. Training runs on padded mini-batches of ``batch_size`` bags,
    each bag subsampled to ``max_tiles`` tiles per step; early stopping watches the loss on an inner patient-grouped
    validation split (``validation_fraction`` of the groups) with ``patience`` epochs and restores the best weights.
    Deterministic on CPU for a given ``random_state``.

    Parameters
    ----------
    mode : {"instance", "embedding"}
    attention : {"gated", "tanh"}
    hidden_dim : int
        ``E``, units of the per-tile hidden layer.
    attention_dim : int
        ``D``, units of the attention branch.
    dropout : float
    optimizer : {"adamw", "adam", "sgd"}
    lr, weight_decay, momentum, nesterov
        Optimiser settings (``momentum``/``nesterov`` for SGD).
    batch_size : int
        Bags per step.
    max_epochs : int
    patience : int or None
        Early-stopping patience in epochs (training runs at least ``2 × patience`` epochs); None trains
        ``max_epochs``.
    validation_fraction : float
        Fraction of groups held out for early stopping (0 disables it; needs ≥ 5 groups).
    max_tiles : int or None
        At most this many tiles are sampled per bag per training step (all tiles are used for prediction).
    tile_fraction : float
        Fraction of a bag's tiles sampled per training step (a strong regulariser: no single tile can be relied
        on); 1.0 uses every tile up to ``max_tiles``.
    standardize : bool
    pca_components : int or None
        Project the (standardised) tile features onto their ``pca_components`` leading principal axes before the
        network; the axes are fitted in ``fit`` on the training bags' tiles only (on the same subsample of at most
        50,000 tiles as the standardisation). With a few dozen patients and 1000-d foundation-model embeddings this
        curbs over-fitting (and speeds training); None feeds the features as they are.
    clamp : float or None
        Clamp bag predictions to ``[-clamp, clamp]`` (z-scored scale), as in the paper.
    per_gene : bool
        Fit one independent model per gene (the paper) instead of one multi-gene model.
    n_members : int
        Fit this many models, each with its own seed (initialisation, batches and early-stopping validation split),
        and average their predictions, attention and tile predictions. Training a network on a few dozen bags is
        noisy from seed to seed; averaging members reduces that variance at ``n_members`` × the training time.
    device : {"auto", "cpu", "cuda"}
        ``auto`` uses CUDA when available; CUDA runs under bf16 autocast.
    n_threads : int or None
        torch CPU threads during ``fit``/``predict`` (restored afterwards); None keeps torch's setting. On a busy
        machine 1 thread can be much faster than several for bag-sized matmuls.
    random_state : int, RandomState or None
    verbose : bool

    Attributes
    ----------
    module_ : torch.nn.Module
        The fitted network (on CPU), when ``per_gene`` is false or there is one gene.
    estimators_ : list of AttentionMILRegressor
        One single-gene model per gene when ``per_gene`` and several genes.
    members_ : list of AttentionMILRegressor or None
        The ``n_members`` fitted members when ``n_members > 1``.
    history_ : list of dict
        Per epoch ``train_loss`` (and ``val_loss``), z-scored MSE, and ``seconds``.
    y_mean_, y_scale_ : ndarray of shape (n_genes,)
    x_projection_, x_offset_ : ndarray of shape (n_features, pca_components) and (pca_components,), or None
        With ``pca_components``, the network sees ``x @ x_projection_ + x_offset_`` per tile (standardisation and
        centring folded in); None without.
    pca_explained_variance_ : ndarray of shape (pca_components,) or None
        Variance along each principal axis (of the standardised features), with ``pca_components``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(int(rng.integers(5, 20)), 8)).astype("float32") for _ in range(30)]
    >>> y = np.array([b[:, 0].mean() for b in bags])
    >>> mil = AttentionMILRegressor(max_epochs=5, random_state=0).fit(bags, y)
    >>> mil.predict(bags).shape
    (30,)
    >>> scores = mil.predict_tiles(bags[:1])[0]
    >>> scores.attention.shape == (len(bags[0]), 1), bool(np.isclose(scores.attention.sum(), 1.0))
    (True, True)
    """

    def __init__(
        self,
        *,
        mode: str = "instance",
        attention: str = "gated",
        hidden_dim: int = 128,
        attention_dim: int = 64,
        dropout: float = 0.1,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        momentum: float = 0.9,
        nesterov: bool = False,
        batch_size: int = 8,
        max_epochs: int = 50,
        patience: int | None = 10,
        validation_fraction: float = 0.2,
        max_tiles: int | None = 512,
        tile_fraction: float = 0.5,
        standardize: bool = True,
        pca_components: int | None = None,
        clamp: float | None = None,
        per_gene: bool = False,
        n_members: int = 1,
        device: str = "auto",
        n_threads: int | None = None,
        random_state=None,
        verbose: bool = False,
    ):
        self.mode = mode
        self.attention = attention
        self.hidden_dim = hidden_dim
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.nesterov = nesterov
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.max_tiles = max_tiles
        self.tile_fraction = tile_fraction
        self.standardize = standardize
        self.pca_components = pca_components
        self.clamp = clamp
        self.per_gene = per_gene
        self.n_members = n_members
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    @classmethod
    def graziani2022(cls, **overrides) -> AttentionMILRegressor:
        """The paper's model: tanh attention over per-tile linear predictions, one model per gene.

        E=128, D=64, dropout 0.2, SGD lr 1e-4 (momentum 0.9, Nesterov, weight decay 0.01), one bag per step, at most
        100 epochs with early stopping patience 12, bag outputs clamped to [-10, 10]; every tile of a bag is used
        (no subsampling). ``overrides`` replace any of these (e.g. ``device="cuda"``, ``random_state=0``).
        """
        params = dict(GRAZIANI2022)
        params.update(overrides)
        return cls(**params)

    _INTEGER_PARAMS = (*_TorchBagRegressor._INTEGER_PARAMS, "hidden_dim", "attention_dim")
    _NUMBER_PARAMS = (*_TorchBagRegressor._NUMBER_PARAMS, "momentum")
    _OPTIONAL_NUMBER_PARAMS = ("clamp",)

    def _check_params(self) -> None:
        super()._check_params()
        if self.mode not in ("instance", "embedding"):
            raise BagInputError(
                f"AttentionMILRegressor: mode must be 'instance' or 'embedding'; got {self.mode!r}"
            )
        if self.attention not in ("gated", "tanh"):
            raise BagInputError(
                f"AttentionMILRegressor: attention must be 'gated' or 'tanh'; got {self.attention!r}"
            )
        m = self.n_members
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise BagInputError(f"AttentionMILRegressor: n_members must be an integer ≥ 1; got {m!r}")
        k = self.pca_components
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
            raise BagInputError(
                f"AttentionMILRegressor: pca_components must be None or an integer ≥ 1; got {k!r}"
            )

    def _build(self, d: int, n_genes: int) -> nn.Module:
        return _MILNet(
            d,
            n_genes,
            mode=self.mode,
            attention=self.attention,
            hidden=int(self.hidden_dim),
            att_dim=int(self.attention_dim),
            dropout=float(self.dropout),
            clamp=self.clamp,
        )

    def fit(self, bags, y, groups=None):
        """Fit on ``bags`` and ``y`` (see :meth:`_TorchBagRegressor.fit`); with ``per_gene``, one model per gene."""
        Y = np.asarray(y)
        self.members_ = None
        if self.n_members != 1:
            self._check_params()
            seeds = check_random_state(self.random_state).randint(0, 2**31 - 1, size=int(self.n_members))
            self.members_ = [
                clone(self).set_params(n_members=1, random_state=int(s)).fit(bags, y, groups=groups)
                for s in seeds
            ]
            first = self.members_[0]
            for attr in ("n_features_in_", "n_outputs_", "_y_was_1d", "y_mean_", "y_scale_", "device_"):
                setattr(self, attr, getattr(first, attr))
            self.history_ = [e.history_ for e in self.members_]
            self.module_, self.estimators_ = None, None
            return self
        if not self.per_gene or Y.ndim != 2 or Y.shape[1] == 1:
            self.estimators_ = None
            return super().fit(bags, y, groups=groups)
        bags = check_bags(bags, who=type(self).__name__)
        Y, _ = check_targets(Y, len(bags), who=type(self).__name__)
        self._check_params()
        self.estimators_ = []
        for g in range(Y.shape[1]):
            keep = ~np.isnan(Y[:, g])
            sub = clone(self).set_params(per_gene=False)
            sub.fit(
                [b for b, k in zip(bags, keep, strict=True) if k],
                Y[keep, g],
                groups=None if groups is None else np.asarray(groups)[keep],
            )
            self.estimators_.append(sub)
        first = self.estimators_[0]
        self.n_features_in_, self.n_outputs_, self._y_was_1d = first.n_features_in_, Y.shape[1], False
        self.y_mean_ = np.array([e.y_mean_[0] for e in self.estimators_])
        self.y_scale_ = np.array([e.y_scale_[0] for e in self.estimators_])
        self.history_ = [e.history_ for e in self.estimators_]
        self.module_ = None
        self.device_ = first.device_
        return self

    def predict(self, bags) -> np.ndarray:
        """Bag predictions: ``(n_bags,)`` when fitted on 1-D ``y``, else ``(n_bags, n_genes)``, on ``y``'s scale."""
        if getattr(self, "members_", None):
            return np.mean([e.predict(bags) for e in self.members_], axis=0)
        if getattr(self, "estimators_", None):
            return np.column_stack([e.predict(bags) for e in self.estimators_])
        return super().predict(bags)

    def _tile_outputs(self, bags):
        if getattr(self, "members_", None):  # members: the same tiles and genes, averaged
            return _merge_tile_outputs(
                [e._tile_outputs(bags) for e in self.members_],
                lambda parts: np.mean(parts, axis=0).astype(np.float32),
            )
        if getattr(self, "estimators_", None):  # one model per gene: gene columns side by side
            return _merge_tile_outputs(
                [e._tile_outputs(bags) for e in self.estimators_], lambda parts: np.concatenate(parts, axis=1)
            )
        return super()._tile_outputs(bags)


def _merge_tile_outputs(per_model: list, combine) -> list:
    """Merge several models' per-bag ``(attention, logits, tile)`` outputs element-wise (None stays None)."""
    return [
        tuple(None if parts[0] is None else combine(parts) for parts in zip(*bag_outputs, strict=True))
        for bag_outputs in zip(*per_model, strict=True)
    ]


#: The paper's hyper-parameters (Graziani et al. 2022, public code).
GRAZIANI2022 = dict(
    mode="instance",
    attention="tanh",
    hidden_dim=128,
    attention_dim=64,
    dropout=0.2,
    optimizer="sgd",
    lr=1e-4,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.01,
    batch_size=1,
    max_epochs=100,
    patience=12,
    max_tiles=None,
    tile_fraction=1.0,
    standardize=False,
    clamp=10.0,
    per_gene=True,
)


class HE2RNARegressor(_TorchBagRegressor):
    """HE2RNA-style regressor (Schmauch et al. 2020): a per-tile MLP whose bag value is a top-k tile mean.

    Each training step draws ``k`` from ``ks``; prediction averages the top-``k`` means over all ``ks``. The
    attention of :meth:`predict_tiles` is each tile's weight in that average (it sums to 1 over the bag).

    Parameters
    ----------
    hidden : tuple of int
        Widths of the per-tile MLP's hidden layers.
    ks : tuple of int
        The top-k sizes.
    dropout, optimizer, lr, weight_decay, batch_size, max_epochs, patience, validation_fraction, max_tiles,
    tile_fraction, standardize, device, n_threads, random_state, verbose
        As in :class:`AttentionMILRegressor`.
    """

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (256,),
        ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100),
        dropout: float = 0.25,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        batch_size: int = 8,
        max_epochs: int = 50,
        patience: int | None = 10,
        validation_fraction: float = 0.2,
        max_tiles: int | None = 512,
        tile_fraction: float = 0.5,
        standardize: bool = True,
        device: str = "auto",
        n_threads: int | None = None,
        random_state=None,
        verbose: bool = False,
    ):
        self.hidden = hidden
        self.ks = ks
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.max_tiles = max_tiles
        self.tile_fraction = tile_fraction
        self.standardize = standardize
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("ks", "hidden"):
            values = getattr(self, name)
            if (
                isinstance(values, str | bytes)
                or not isinstance(values, Sequence)
                or not values
                or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in values)
            ):
                raise BagInputError(f"HE2RNARegressor: {name} must be positive integers; got {values!r}")

    def _build(self, d: int, n_genes: int) -> nn.Module:
        return _HE2RNANet(
            d, n_genes, hidden=tuple(self.hidden), dropout=float(self.dropout), ks=tuple(self.ks)
        )

    def _train_step_hook(self, module: nn.Module, rng: np.random.Generator) -> None:
        module.k_train = int(self.ks[int(rng.integers(len(self.ks)))])
