"""Attention-MIL (Graziani et al. 2022; Ilse et al. 2018) and HE2RNA-style bag regressors in torch.

Both are scikit-learn estimators over *bags*: ``fit(bags, y)`` with ``bags`` a list of ``(n_tiles, d)`` arrays and
``y`` of shape ``(n_bags,)`` or ``(n_bags, n_genes)``. One ``fit`` trains one network; one network per gene and
averages over seeds are the meta-estimators :class:`PerGeneRegressor` and :class:`SeedEnsemble`, which
:func:`~slide2expr.regress.make_model` composes from ``per_gene`` and ``n_members``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn

from slide2expr.regress._checks import (
    BagInputError,
    check_bags,
    check_device,
    check_groups,
    check_params,
    check_targets,
)
from slide2expr.regress._meta import MAX_SEED, TileScores
from slide2expr.regress._nets import HE2RNANet, MILNet
from slide2expr.regress._projection import TileProjection
from slide2expr.regress._torchbag import OPTIMIZERS, inner_split, make_optimizer, resolve_device
from slide2expr.regress._training import (
    LoopSettings,
    NetworkInputs,
    bag_outputs,
    network_outputs,
    train_network,
)

#: A gene whose training targets vary less than this (standard deviation) is centred but not scaled.
MIN_TARGET_STD = 1e-12


def _subsample_bags(bags: list, which, cap: int, rng: np.random.Generator) -> list:
    """``bags`` with each bag of ``which`` longer than ``cap`` tiles replaced by ``cap`` of its tiles drawn without
    replacement (kept in order).

    >>> bags = [np.arange(10)[:, None], np.arange(3)[:, None]]
    >>> [len(b) for b in _subsample_bags(bags, [0, 1], 4, np.random.default_rng(0))]
    [4, 3]
    """
    out = list(bags)
    for i in which:
        if len(out[i]) > cap:
            out[i] = out[i][np.sort(rng.choice(len(out[i]), cap, replace=False))]
    return out


class _TorchBagRegressor(RegressorMixin, BaseEstimator):
    """What the torch bag regressors share: checks, target scaling, the tile projection, training, inference.

    A subclass gives :meth:`build_network` and its parameters' tables (``_PARAM_KINDS``, ``_CHOICES``,
    ``_POSITIVE``); hooks: :meth:`_tile_projection`, :meth:`_optimizer_options`, :meth:`_train_step`."""

    #: Parameter → kind (see ``check_param``), checked before training.
    _PARAM_KINDS = dict.fromkeys(("batch_size", "max_epochs", "min_epochs"), "integer") | {
        **dict.fromkeys(("lr", "weight_decay", "dropout", "validation_fraction", "tile_fraction"), "number"),
        **dict.fromkeys(("patience", "max_tiles", "val_max_tiles", "n_threads"), "integer or None"),
    }
    #: Parameter → the values it takes.
    _CHOICES: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZERS}
    #: Parameters that must be > 0 when given.
    _POSITIVE: tuple[str, ...] = ("lr", "batch_size", "max_epochs", "max_tiles", "val_max_tiles")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
        tags.non_deterministic = cuda  # CUDA kernels are not bitwise reproducible
        return tags

    def build_network(self, n_features: int, n_genes: int) -> nn.Module:
        """A freshly initialised network for ``n_features`` inputs per tile and ``n_genes`` outputs."""
        raise NotImplementedError

    def _tile_projection(self) -> TileProjection:
        """The unfitted tile step that ``fit`` fits on the training tiles."""
        return TileProjection(standardize=self.standardize)

    def _optimizer_options(self) -> dict:
        """Keyword arguments of ``make_optimizer``."""
        return {"name": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay}

    def _train_step(self, module: nn.Module, rng: np.random.Generator) -> None:
        """Called before each training step."""

    def _check_params(self) -> None:
        who, params = type(self).__name__, self.get_params(deep=False)
        check_params(who, params, kinds=self._PARAM_KINDS, choices=self._CHOICES, positive=self._POSITIVE)
        if not 0 < self.tile_fraction <= 1:
            raise BagInputError(f"{who}: tile_fraction must be in (0, 1]; got {self.tile_fraction!r}")
        if self.min_epochs < 0:
            raise BagInputError(f"{who}: min_epochs must be ≥ 0; got {self.min_epochs!r}")
        if not 0 <= self.validation_fraction < 1:
            raise BagInputError(
                f"{who}: validation_fraction must be in [0, 1); got {self.validation_fraction!r}"
            )
        check_device(self.device)

    def fit(self, bags, y, groups=None, *, eval_set=None):
        """Fit one network on ``bags`` (``(n_tiles, d)`` arrays) and ``y`` (``(n_bags,)`` or ``(n_bags, n_genes)``;
        NaN is left out of the loss). Returns ``self``.

        Early stopping (``patience``) watches the loss on ``eval_set`` (``(bags, y)`` of other patients) when given;
        otherwise on a ``validation_fraction`` of ``groups`` (``(n_bags,)``, the patients: the split is patient-
        grouped; without them each bag is its own group), left out of training. The tile projection and the target
        scaling are fitted on the training bags only."""
        who = type(self).__name__
        bags = check_bags(bags, who=who)
        Y, was_1d = check_targets(y, len(bags), who=who)
        self._check_params()
        n, d = len(bags), bags[0].shape[1]
        groups = check_groups(groups, n)
        val_bags, val_Y = self._eval_set(eval_set, d=d, n_genes=Y.shape[1])
        seed = int(check_random_state(self.random_state).randint(0, MAX_SEED))
        self.n_features_in_, self.n_outputs_, self._y_was_1d = d, Y.shape[1], was_1d
        self.y_mean_ = np.nanmean(Y, axis=0)
        std = np.nanstd(Y, axis=0)
        self.y_scale_ = np.where(std > MIN_TARGET_STD, std, 1.0)
        rng = np.random.default_rng(seed)
        self.tile_projection_ = self._tile_projection().fit(bags, rng=rng)
        net_bags, x_mean, x_scale = self.tile_projection_.network_inputs(bags)
        if val_bags is not None:
            net_bags = [*net_bags, *self.tile_projection_.network_inputs(val_bags)[0]]
            Y = np.vstack([Y, val_Y])
            train, val = np.arange(n), (np.arange(n, len(net_bags)) if self.patience else None)
        else:
            split = inner_split(groups, self.validation_fraction, seed) if self.patience else None
            train, val = (np.arange(n), None) if split is None else split
        if val is not None and self.val_max_tiles is not None:
            net_bags = _subsample_bags(
                net_bags, val, int(self.val_max_tiles), np.random.default_rng([seed, 1])
            )
        device = resolve_device(self.device)
        self.device_ = str(device)
        t0 = time.perf_counter()
        trained = train_network(
            lambda: self.build_network(net_bags[0].shape[1], Y.shape[1]),
            partial(make_optimizer, **self._optimizer_options()),
            NetworkInputs(net_bags, (Y - self.y_mean_) / self.y_scale_, x_mean, x_scale, train, val),
            settings=LoopSettings.from_params(self.get_params(deep=False), name=who),
            seed=seed,
            rng=rng,
            device=device,
            step_hook=self._train_step,
        )
        self.module_, self.history_, self.best_epoch_ = trained.module, trained.history, trained.best_epoch
        self.n_epochs_, self.fit_seconds_ = len(self.history_), time.perf_counter() - t0
        return self

    def _eval_set(self, eval_set, *, d: int, n_genes: int):
        """``(bags, Y)`` of ``eval_set`` checked against the training data, or ``(None, None)``."""
        if eval_set is None:
            return None, None
        who = type(self).__name__
        try:
            val_bags, val_y = eval_set
        except (TypeError, ValueError):
            raise BagInputError(
                f"{who}: eval_set must be a pair (bags, y); got {type(eval_set).__name__}"
            ) from None
        val_bags = check_bags(val_bags, n_features=d, what="eval_set bags", who=who)
        val_Y, _ = check_targets(val_y, len(val_bags), who=who)
        if val_Y.shape[1] != n_genes:
            raise BagInputError(f"{who}: eval_set has {val_Y.shape[1]} target columns; y has {n_genes}")
        return val_bags, val_Y

    def _outputs(self, bags, *, tiles: bool):
        """:func:`network_outputs` of ``bags`` through the fitted projection and network (left on the CPU)."""
        check_is_fitted(self, "module_")
        bags = check_bags(bags, n_features=self.n_features_in_, who=type(self).__name__)
        net_bags, x_mean, x_scale = self.tile_projection_.network_inputs(bags)
        device = resolve_device(self.device)
        kwargs = dict(x_mean=x_mean, x_scale=x_scale, device=device, n_threads=self.n_threads)
        try:
            module = self.module_.to(device)
            if not tiles:
                return bag_outputs(module, net_bags, n_outputs=self.n_outputs_, **kwargs)
            return list(network_outputs(module, net_bags, tiles=True, **kwargs))
        finally:
            self.module_ = self.module_.cpu()

    def predict(self, bags) -> np.ndarray:
        """Bag predictions on ``y``'s scale: ``(n_bags,)`` when fitted on 1-D ``y``, else ``(n_bags, n_genes)``."""
        pred = self._outputs(bags, tiles=False) * self.y_scale_ + self.y_mean_
        return pred[:, 0] if self._y_was_1d else pred

    def predict_tiles(self, bags) -> list[TileScores]:
        """One :class:`TileScores` per bag, each field ``(n_tiles, n_genes)`` float32: ``attention`` (columns sum to
        1 over the bag's tiles), ``tile_pred`` on ``y``'s scale (None without per-tile predictions), and
        ``attention_logit``, the attention before the softmax (None without one)."""
        outputs = self._outputs(bags, tiles=True)
        out: list = [None] * len(outputs)
        for i, (_, att, logits, tile) in outputs:
            if tile is not None:
                tile = (tile * self.y_scale_ + self.y_mean_).astype(np.float32)
            logits = None if logits is None else logits.astype(np.float32)
            out[i] = TileScores(att.astype(np.float32), tile, logits)
        return out


class AttentionMILRegressor(_TorchBagRegressor):
    """Attention-based multiple-instance regression of bag-level targets (e.g. bulk gene expression).

    ``mode="instance"`` (the seed paper's, Graziani et al. 2022): tile ``t`` gets ``h_t = act(W x_t)``, a
    prediction ``p_t = w_g · h_t`` and an attention ``a_t = softmax_t(w_a,g · tanh(V h_t) [⊙ σ(U h_t)])`` per gene
    ``g``; the bag predicts ``Σ_t a_t p_t``. ``mode="embedding"`` (Ilse et al. 2018): the attention pools ``h_t``
    per gene and a head maps the pooled embedding to the bag value. ``fit`` z-scores the targets per gene, fits a
    :class:`TileProjection` on the training tiles and trains one network; deterministic on CPU for a
    ``random_state``. The seed paper's exact network is the :data:`GRAZIANI2022` preset; what the defaults add to
    it is slide2expr's own: the ReLU hidden layer, the gated attention option, several genes in one network
    (one attention branch each), the tile projection, AdamW, mini-batches of bags, and the meta-estimators that
    compose networks (:class:`NestedMIL`, :class:`SeedEnsemble`, :class:`PerGeneRegressor`).

    The defaults are pre-registered: chosen on the tuning cohorts of ``benchmarks/validity.py`` only (seed 0, the
    demo's cohort), never on the cohorts it reports. Tanh attention without dropout, every tile of a bag at every
    step, up to 100 epochs with patience 20 and at least 40: on the 40-patient cohort these lifted the hotspot
    genes over faster settings (subsampled tiles, gated attention, dropout, 50 epochs); ``pca_components`` 16:
    32 training patients against 1,280-d embeddings over-fit, and 16 principal axes of the training tiles keep the
    compartments apart. Choices that must follow the data — the number of epochs (early stopping on held-out
    patients), the bag readout — are made inside the training patients by :class:`NestedMIL`, which the ``mil``
    model wraps around this network.

    Parameters
    ----------
    mode, attention : {"instance", "embedding"}, {"gated", "tanh"}
    hidden_dim, attention_dim : int
        Units of the per-tile hidden layer and of the attention branch.
    activation : {"relu", "identity"}
        After the hidden layer (the paper's has none).
    dropout, dropout_site : float, {"hidden", "head"}
        Dropout on the hidden layer, seen by the attention and the prediction head (``"hidden"``), or by the
        prediction head only (``"head"``, the paper's).
    pooling : {"attention", "mean"}
        The bag value weighs the tile predictions (or embeddings) by the attention, or equally (the attention
        branch is then not trained).
    optimizer, lr, weight_decay, momentum, nesterov
        The optimiser (``"adamw"``, ``"adam"``, ``"sgd"``; ``momentum``/``nesterov`` for SGD).
    batch_size, max_epochs : int
    patience, min_epochs, validation_fraction : int or None, int, float
        Stop after ``patience`` epochs without a lower loss on the validation bags, never before ``min_epochs``,
        and keep the epoch with the lowest; the validation bags are ``fit``'s ``eval_set`` or a patient-grouped
        ``validation_fraction`` of the groups (needs ≥ 5 groups). None or 0: no early stopping.
    max_tiles, tile_fraction : int or None, float
        A training step sees ``min(max_tiles, ceil(tile_fraction × n_tiles))`` tiles of a bag; prediction all.
    val_max_tiles : int or None
        The early-stopping loss sees at most this many tiles of each validation bag, a random subsample drawn once
        per fit (None: every tile). With bags of ~10,000 tiles the validation pass of every epoch costs more than
        the training steps; a few thousand tiles per bag estimate the bag output well enough to choose the epoch.
        Readouts and predictions use every tile.
    standardize, pca_components : bool, int or None
        The tile step (:class:`TileProjection`): standardised features, projected on at most this many principal
        axes (fewer when the tiles have fewer features).
    clamp : float or None
        Clamp tile predictions and bag outputs to ``[-clamp, clamp]`` on the z-scored scale.
    device, n_threads : str, int or None
        ``auto``, ``cpu``, ``cuda`` or ``cuda:<i>`` (bf16 autocast on CUDA); torch CPU threads (None: torch's).
    random_state, verbose : int, RandomState or None, bool

    Attributes
    ----------
    module_, tile_projection_ : torch.nn.Module, TileProjection
        The fitted network (on CPU) and tile step.
    y_mean_, y_scale_ : ndarray of shape (n_genes,)
    history_ : list of dict
        Per epoch ``train_loss`` (and ``val_loss``), z-scored MSE, and ``seconds``.
    best_epoch_, n_epochs_ : int
        The epoch whose weights the network holds, and the epochs run.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(int(rng.integers(5, 20)), 8)).astype("float32") for _ in range(30)]
    >>> mil = AttentionMILRegressor(max_epochs=5, random_state=0).fit(bags, [b[:, 0].mean() for b in bags])
    >>> mil.predict(bags).shape, mil.predict_tiles(bags[:1])[0].attention.shape == (len(bags[0]), 1)
    ((30,), True)
    """

    _PARAM_KINDS = _TorchBagRegressor._PARAM_KINDS | {
        **dict.fromkeys(("hidden_dim", "attention_dim"), "integer"),
        **{"momentum": "number", "clamp": "number or None", "pca_components": "integer or None"},
    }
    _CHOICES = _TorchBagRegressor._CHOICES | {
        "mode": ("instance", "embedding"),
        "attention": ("gated", "tanh"),
        "activation": ("relu", "identity"),
        "dropout_site": ("hidden", "head"),
        "pooling": ("attention", "mean"),
    }
    _POSITIVE = (*_TorchBagRegressor._POSITIVE, "hidden_dim", "attention_dim", "pca_components")

    def __init__(
        self,
        *,
        mode: str = "instance",
        attention: str = "tanh",
        hidden_dim: int = 128,
        attention_dim: int = 64,
        activation: str = "relu",
        dropout: float = 0.0,
        dropout_site: str = "hidden",
        pooling: str = "attention",
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        momentum: float = 0.9,
        nesterov: bool = False,
        batch_size: int = 8,
        max_epochs: int = 100,
        patience: int | None = 20,
        min_epochs: int = 40,
        validation_fraction: float = 0.2,
        max_tiles: int | None = None,
        val_max_tiles: int | None = None,
        tile_fraction: float = 1.0,
        standardize: bool = True,
        pca_components: int | None = 16,
        clamp: float | None = None,
        device: str = "auto",
        n_threads: int | None = None,
        random_state=None,
        verbose: bool = False,
    ):
        self.mode = mode
        self.attention = attention
        self.hidden_dim = hidden_dim
        self.attention_dim = attention_dim
        self.activation = activation
        self.dropout = dropout
        self.dropout_site = dropout_site
        self.pooling = pooling
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.nesterov = nesterov
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.min_epochs = min_epochs
        self.validation_fraction = validation_fraction
        self.max_tiles = max_tiles
        self.val_max_tiles = val_max_tiles
        self.tile_fraction = tile_fraction
        self.standardize = standardize
        self.pca_components = pca_components
        self.clamp = clamp
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def build_network(self, n_features: int, n_genes: int) -> nn.Module:
        sizes = dict(
            hidden=int(self.hidden_dim), att_dim=int(self.attention_dim), dropout=float(self.dropout)
        )
        return MILNet(
            n_features,
            n_genes,
            mode=self.mode,
            attention=self.attention,
            clamp=self.clamp,
            activation=self.activation,
            dropout_site=self.dropout_site,
            pooling=self.pooling,
            **sizes,
        )

    def _tile_projection(self) -> TileProjection:
        return TileProjection(standardize=self.standardize, pca_components=self.pca_components)

    def _optimizer_options(self) -> dict:
        return {**super()._optimizer_options(), "momentum": self.momentum, "nesterov": self.nesterov}


#: The seed paper's model (Graziani et al. 2022, iMIMIC @ MICCAI; ``MIL_model`` and the training loop of its public
#: ``code/train.py`` with the ``train_all.sh`` settings for ResNet18 features), one network: tile ``t`` gets the
#: linear embedding ``e_t = W x_t + b`` (128 units, no activation); the attention ``softmax_t(w · tanh(V e_t + c))``
#: (64 units) sees ``e_t`` itself, the tile predictor ``p_t = u · dropout_0.2(e_t)`` its dropout; tile predictions
#: and the bag value ``Σ_t a_t p_t`` are clamped to [-10, 10]; MSE, SGD (lr 1e-4, momentum 0.9, Nesterov, weight
#: decay 0.01) on one bag of all its tiles per step, at most 100 epochs, the best-validation epoch kept, stopping
#: after 12 epochs without a lower validation loss and no minimum; raw (unstandardised) features. The paper fits one
#: network per gene (``make_model("mil", params={"preset": "graziani2022"})`` does).
#: slide2expr's, not the paper's: the targets are z-scored on the training bags (the clamp applies on that scale;
#: the seed's code reads target values as given in its split files), the early-stopping set is a patient-grouped
#: ``validation_fraction`` of the training patients (the seed reads a validation file per split), and the features
#: are the store's fixed embeddings (the seed re-embeds flipped and rotated tiles every epoch).
GRAZIANI2022 = dict(
    mode="instance",
    attention="tanh",
    hidden_dim=128,
    attention_dim=64,
    activation="identity",
    dropout=0.2,
    dropout_site="head",
    pooling="attention",
    optimizer="sgd",
    lr=1e-4,
    momentum=0.9,
    nesterov=True,
    weight_decay=0.01,
    batch_size=1,
    max_epochs=100,
    patience=12,
    min_epochs=0,
    max_tiles=None,
    tile_fraction=1.0,
    standardize=False,
    pca_components=None,
    clamp=10.0,
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
    val_max_tiles, tile_fraction, standardize, device, n_threads, random_state, verbose
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
        min_epochs: int = 20,
        validation_fraction: float = 0.2,
        max_tiles: int | None = 512,
        val_max_tiles: int | None = None,
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
        self.min_epochs = min_epochs
        self.validation_fraction = validation_fraction
        self.max_tiles = max_tiles
        self.val_max_tiles = val_max_tiles
        self.tile_fraction = tile_fraction
        self.standardize = standardize
        self.device = device
        self.n_threads = n_threads
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self) -> None:
        super()._check_params()
        for name, values in (("ks", self.ks), ("hidden", self.hidden)):
            if (
                isinstance(values, str | bytes)
                or not isinstance(values, Sequence)
                or not values
                or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in values)
            ):
                raise BagInputError(f"HE2RNARegressor: {name} must be positive integers; got {values!r}")

    def build_network(self, n_features: int, n_genes: int) -> nn.Module:
        return HE2RNANet(
            n_features, n_genes, hidden=tuple(self.hidden), dropout=float(self.dropout), ks=tuple(self.ks)
        )

    def _train_step(self, module: nn.Module, rng: np.random.Generator) -> None:
        """Draw this step's ``k`` from ``ks``."""
        module.k_train = int(self.ks[int(rng.integers(len(self.ks)))])
