"""The model registry: a name → a factory of fresh estimators, with what a harness needs to know about each.

>>> from slide2expr import regress
>>> regress.list_models()[:3]
['mil', 'mil-embedding', 'lgbm']
>>> regress.model_info("mil").attention, regress.model_info("ridge").example
(True, {'alphas': [1, 10, 100]})
>>> type(regress.make_model("mil", params={"n_members": 3}, random_state=0)).__name__
'SeedEnsemble'
>>> type(regress.make_model("mil")).__name__, type(regress.make_model("mil", params={"nested": False})).__name__
('NestedMIL', 'AttentionMILRegressor')
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator

from slide2expr.regress._baselines import MeanRegressor, lgbm_regressor, ridge_regressor
from slide2expr.regress._meta import PerGeneRegressor, SeedEnsemble
from slide2expr.regress._mil import GRAZIANI2022, AttentionMILRegressor, HE2RNARegressor
from slide2expr.regress._nested import NestedMIL

#: The presets of the attention-MIL models: network parameters, and whether the paper fits one network per gene.
MIL_PRESETS = {"graziani2022": (GRAZIANI2022, True)}
#: What the attention-MIL factories take besides :class:`AttentionMILRegressor`'s own parameters.
MIL_COMPOSITION = ("preset", "per_gene", "n_members", "nested", "n_inner", "grid", "readouts")
#: :class:`NestedMIL`'s settings of the ``mil`` models without a preset (see :data:`PRE_REGISTERED`).
NESTED_DEFAULTS = {"n_inner": 5, "grid": None, "readouts": ("output", "stack")}

#: What ``compare`` runs without ``--params``, and why: chosen on the tuning cohorts of ``benchmarks/validity.py``
#: only, never on the cohorts it reports; the benchmark's page prints this text.
PRE_REGISTERED = """
- `mil`: `NestedMIL(AttentionMILRegressor())`. Five inner patient-grouped folds of the training patients; each
  trains one network on four of them, early-stopped on the fifth, whose out-of-fold readout features it records.
  Per gene, the readout with the lower out-of-fold error: the networks' own output, or a ridge stack of the readout
  features (network output; mean, median and 90th percentile of the tile predictions; share of tiles above learned
  thresholds of the tile prediction and of the attention logit; penalty by leave-one-out). The five networks
  average. Reason: on the tuning cohort the attention found the hotspot tiles while the bag output lagged the
  share of hotspot tissue; the stack reads that share, the inner folds give the honest out-of-fold features it
  needs, and five networks cost what the four-seed ensemble it replaces cost. Network: instance mode, tanh
  attention, 128 hidden (ReLU) and 64 attention units, no dropout, AdamW (lr 3e-3, weight decay 1e-2), batches of
  8 bags with every tile, at most 100 epochs, patience 20, at least 40, 16 principal axes of the training tiles
  (the settings the demo cohort favoured; 32 training patients against 1,280-d embeddings over-fit).
- `lgbm`: mean and max of each feature; 150 trees, learning rate 0.05, 7 leaves, depth 3, 30 % of the features per
  tree, L2 1; a leaf per 8 training bags (2 to 20) and row subsampling from 50 bags, so that a tree can split at 10
  patients.
- `ridge`: the pooled statistics (mean, mean + std, or mean + max) chosen by 5-fold patient-grouped inner
  cross-validation of the training patients; the penalty per gene by leave-one-out among 22 values from 0.1 to
  10^6; standardised features.
- Significance: a gene is well predicted when its pooled r > 0 with BH-FDR < 0.05, its RMSE is below the
  training mean's, and the model beats its null — the same model refitted on the training targets permuted among
  the training patients — by Steiger's one-sided test at BH-FDR < 0.05, with an RMSE below the null's.
"""


class UnknownModelError(ValueError):
    """A model name that is not registered, or parameters the model does not take."""


@dataclass(frozen=True)
class ModelInfo:
    """A registered model.

    Attributes
    ----------
    name
    build
        ``build(params, random_state) → estimator``; ``params`` is a fresh dict the factory may consume.
    attention
        Whether a run records the model's held-out attention (``attention.parquet``, from ``predict_tiles``).
        HE2RNA's per-tile weights are its top-k ranks, not a learnt attention, and are not recorded.
    example
        An example of its parameters, for messages and documentation.
    parameters
        The parameter names it takes; None when it passes any keyword on to its library.
    description
    """

    name: str
    build: Callable[[dict, object], BaseEstimator]
    attention: bool = False
    example: Mapping = field(default_factory=dict)
    parameters: frozenset[str] | None = None
    description: str = ""

    @property
    def takes_device(self) -> bool:
        """Whether the model runs on a torch device (``device`` parameter)."""
        return self.parameters is not None and "device" in self.parameters


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    attention: bool = False,
    example: Mapping | None = None,
    parameters: Callable | frozenset[str] | None = None,
    description: str = "",
):
    """Register the decorated ``build(params, random_state)`` under ``name`` (a repeated name warns and replaces).

    ``parameters`` is the set of names the model takes, or a callable (class or function) whose signature
    gives them.
    """

    def decorator(build: Callable[[dict, object], BaseEstimator]):
        names = parameters
        if callable(names):
            names = frozenset(inspect.signature(names).parameters)
        if name in _REGISTRY:
            warnings.warn(f"model {name!r} is registered again; the new entry replaces it", stacklevel=2)
        _REGISTRY[name] = ModelInfo(name, build, attention, dict(example or {}), names, description)
        return build

    return decorator


def list_models() -> list[str]:
    """The registered model names, in registration order."""
    return list(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of ``name``; :class:`UnknownModelError` listing the choices for any other name."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownModelError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}") from None


def make_model(name: str, *, params: Mapping | None = None, random_state=None) -> BaseEstimator:
    """A fresh, unfitted estimator for model ``name`` with ``params`` applied.

    Parameters
    ----------
    name
        A registered name (:func:`list_models`).
    params
        The model's parameters. ``mil``/``mil-embedding`` take :class:`AttentionMILRegressor`'s, plus
        ``nested`` (inside :class:`NestedMIL`, with its ``n_inner``, ``grid`` and ``readouts``: the default
        without a preset), ``preset="graziani2022"`` (the seed paper's model, one network per gene, not nested;
        the other parameters apply on top), ``per_gene`` (one network per gene: :class:`PerGeneRegressor`) and
        ``n_members`` (an average of that many seeds: :class:`SeedEnsemble`). ``lgbm`` takes ``stats``, ``n_jobs``
        and any ``LGBMRegressor`` parameter; ``ridge`` ``stats``, ``alphas`` and ``n_inner``. The defaults are
        :data:`PRE_REGISTERED`.
    random_state
        Seed of the stochastic models (``random_state`` in ``params`` wins).

    Examples
    --------
    >>> make_model("mil", params={"preset": "graziani2022"}).estimator.get_params()["optimizer"]
    'sgd'
    """
    info = model_info(name)
    if params is not None and not isinstance(params, Mapping):
        raise UnknownModelError(
            f"model {name!r}: parameters must be a mapping of parameter names to values (a JSON object); "
            f"got {params!r}"
        )
    params = dict(params or {})
    given = sorted(params)
    nested = [k for k in given if k in _REGISTRY]
    if nested:
        raise UnknownModelError(
            f"model {name!r}: unknown parameter(s) {', '.join(map(repr, nested))}, which are model names: give the "
            f"model's own parameters directly, e.g. {json.dumps(info.example)}, not nested under a model name "
            "(only compare's --params / model_params are keyed by model)"
        )
    unknown = [k for k in given if info.parameters is not None and k not in info.parameters]
    if unknown:
        raise UnknownModelError(
            f"model {name!r}: bad parameters {unknown}: it takes {', '.join(sorted(info.parameters)) or 'none'}"
        )
    try:
        return info.build(params, random_state)
    except TypeError as exc:
        raise UnknownModelError(f"model {name!r}: bad parameters {given}: {exc}") from exc


def _attention_mil(params: dict, random_state, *, mode: str | None) -> BaseEstimator:
    """``AttentionMILRegressor`` inside :class:`NestedMIL` (``nested``, the default without a preset), one per gene
    with ``per_gene`` (the preset's default), averaged over ``n_members`` seeds."""
    preset = params.pop("preset", None)
    if preset is not None and preset not in MIL_PRESETS:
        raise UnknownModelError(f"unknown preset {preset!r}; the presets are {', '.join(MIL_PRESETS)}")
    network, per_gene = MIL_PRESETS[preset] if preset is not None else ({}, False)
    per_gene = params.pop("per_gene", per_gene)
    n_members = params.pop("n_members", 1)
    nested = params.pop("nested", preset is None)
    inner = {k: params.pop(k, v) for k, v in NESTED_DEFAULTS.items()}
    seed = params.pop("random_state", random_state)
    single = isinstance(n_members, int | np.integer) and not isinstance(n_members, bool) and n_members == 1
    est = AttentionMILRegressor(
        **{**network, **({"mode": mode} if mode else {}), **params, "random_state": seed if single else None}
    )
    if nested:
        est = NestedMIL(est, **inner, random_state=est.random_state)
    if per_gene:
        est = PerGeneRegressor(est)
    return est if single else SeedEnsemble(est, n_members=n_members, random_state=seed)


_MIL_PARAMETERS = frozenset(inspect.signature(AttentionMILRegressor).parameters) | set(MIL_COMPOSITION)


@register_model(
    "mil",
    attention=True,
    example={"max_epochs": 30},
    parameters=_MIL_PARAMETERS,
    description="attention-MIL over per-tile predictions (Graziani et al. 2022); readout and epochs chosen by inner "
    "patient-grouped CV, inner-fold ensemble",
)
def _mil(params: dict, random_state) -> BaseEstimator:
    return _attention_mil(params, random_state, mode=None)


@register_model(
    "mil-embedding",
    attention=True,
    example={"max_epochs": 30},
    parameters=_MIL_PARAMETERS,
    description="attention-pooled embedding, then a head (Ilse et al. 2018)",
)
def _mil_embedding(params: dict, random_state) -> BaseEstimator:
    return _attention_mil(params, random_state, mode="embedding")


@register_model(
    "lgbm",
    example={"n_estimators": 300},
    description="pooled tile statistics → one LightGBM model per gene",
)
def _lgbm(params: dict, random_state) -> BaseEstimator:
    params.setdefault("random_state", random_state)
    return lgbm_regressor(**params)


@register_model(
    "ridge",
    example={"alphas": [1, 10, 100]},
    parameters=ridge_regressor,
    description="pooled tile statistics (chosen by inner CV) → standardised → ridge, alpha per gene by leave-one-out",
)
def _ridge(params: dict, random_state) -> BaseEstimator:
    params.setdefault("random_state", random_state)
    return ridge_regressor(**params)


@register_model(
    "he2rna",
    example={"max_epochs": 30},
    parameters=HE2RNARegressor,
    description="per-tile MLP, bag value the mean of the top-k tiles (Schmauch et al. 2020)",
)
def _he2rna(params: dict, random_state) -> BaseEstimator:
    params.setdefault("random_state", random_state)
    return HE2RNARegressor(**params)


@register_model("mean", parameters=MeanRegressor, description="each gene's training mean: the floor")
def _mean(params: dict, random_state) -> BaseEstimator:
    return MeanRegressor(**params)


#: The built-in model names (derived from the registry), and those whose attention a run records.
MODEL_NAMES = tuple(list_models())
MIL_MODELS = tuple(n for n in MODEL_NAMES if model_info(n).attention)
