"""The model names a run uses, and the factory that turns a name (+ parameters) into a fresh estimator."""

from __future__ import annotations

from collections.abc import Mapping

from sklearn.base import BaseEstimator

from slide2expr.regress._baselines import MeanRegressor, lgbm_regressor, ridge_regressor
from slide2expr.regress._mil import AttentionMILRegressor, HE2RNARegressor

#: Model names in a run: attention-MIL (instance mode), attention-MIL (embedding mode), the baselines, the floor.
MODEL_NAMES = ("mil", "mil-embedding", "lgbm", "ridge", "he2rna", "mean")
#: Models whose held-out attention goes to ``attention.parquet``.
MIL_MODELS = ("mil", "mil-embedding")


#: An example of each model's parameters, for messages.
_EXAMPLE_PARAMS = {
    "mil": '{"max_epochs": 30}',
    "mil-embedding": '{"max_epochs": 30}',
    "he2rna": '{"max_epochs": 30}',
    "lgbm": '{"n_estimators": 300}',
    "ridge": '{"alphas": [1, 10, 100]}',
}


class UnknownModelError(ValueError):
    """A model name that is not in :data:`MODEL_NAMES`, or parameters it does not take."""


def make_model(name: str, *, params: Mapping | None = None, random_state=None) -> BaseEstimator:
    """A fresh, unfitted estimator for model ``name`` with ``params`` applied.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    params
        Constructor parameters. For ``mil``/``mil-embedding``, ``{"preset": "graziani2022", …}`` starts from the
        paper's settings (:meth:`AttentionMILRegressor.graziani2022`) and applies the rest on top. For ``lgbm``:
        ``stats``, ``n_jobs`` and any ``LGBMRegressor`` parameter; for ``ridge``: ``stats``, ``alphas``.
    random_state
        Seed for the stochastic models (ignored by ``ridge`` and ``mean``).

    Examples
    --------
    >>> make_model("mil", params={"preset": "graziani2022"}).get_params()["optimizer"]
    'sgd'
    """
    if params is not None and not isinstance(params, Mapping):
        raise UnknownModelError(
            f"model {name!r}: parameters must be a mapping of parameter names to values (a JSON object); "
            f"got {params!r}"
        )
    params = dict(params or {})
    given = sorted(params)  # what the caller passed, before the defaults below
    nested = [k for k in given if k in MODEL_NAMES]
    if nested:
        raise UnknownModelError(
            f"model {name!r}: unknown parameter(s) {', '.join(map(repr, nested))}, which are model names: give the "
            f"model's own parameters directly, e.g. {_EXAMPLE_PARAMS.get(name, '{}')}, not nested under a model name "
            "(only compare's --params / model_params are keyed by model)"
        )
    try:
        if name in MIL_MODELS:
            preset = params.pop("preset", None)
            if name == "mil-embedding":
                params.setdefault("mode", "embedding")
            params.setdefault("random_state", random_state)
            if preset is None:
                return AttentionMILRegressor(**params)
            if preset != "graziani2022":
                raise UnknownModelError(
                    f"model {name!r}: unknown preset {preset!r}; the one preset is 'graziani2022'"
                )
            return AttentionMILRegressor.graziani2022(**params)
        if name == "he2rna":
            params.setdefault("random_state", random_state)
            return HE2RNARegressor(**params)
        if name == "lgbm":
            params.setdefault("random_state", random_state)
            return lgbm_regressor(**params)
        if name == "ridge":
            return ridge_regressor(**params)
        if name == "mean":
            return MeanRegressor(**params)
    except TypeError as exc:
        raise UnknownModelError(f"model {name!r}: bad parameters {_unknown(name, given)}: {exc}") from exc
    raise UnknownModelError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def _unknown(name: str, given: list[str]) -> list[str]:
    """The names in ``given`` that model ``name`` does not take (all of ``given`` when that cannot be told)."""
    import inspect

    factory = {
        "mil": AttentionMILRegressor,
        "mil-embedding": AttentionMILRegressor,
        "he2rna": HE2RNARegressor,
        "ridge": ridge_regressor,
        "mean": MeanRegressor,
    }.get(name)
    if factory is None:
        return given
    accepted = set(inspect.signature(factory).parameters) | ({"preset"} if name in MIL_MODELS else set())
    return [k for k in given if k not in accepted] or given
