"""Checks of what a bag regressor is given: bags, targets, and typed parameters (no torch needed).

A *bag* is a ``(n_tiles, d)`` array (float32 or float16); a cohort is a list of bags.

>>> import numpy as np
>>> [b.dtype.name for b in check_bags([np.zeros((3, 2)), np.ones((1, 2), dtype=np.float16)])]
['float32', 'float16']
>>> check_targets([1.0, 2.0], 2)[0].shape
(2, 1)
"""

from __future__ import annotations

import re

import numpy as np

#: What ``device`` takes: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:<i>`` for one GPU.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class BagInputError(ValueError):
    """Bags, targets or parameters that a bag regressor cannot use; the message names the parameter."""


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
        a = _as_tiles(b, f"{what}[{i}]")
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


def _as_tiles(bag, name: str) -> np.ndarray:
    """One bag as a non-empty ``(n_tiles, d)`` float32/float16 array, or an error naming it."""
    a = np.asarray(bag)
    if np.iscomplexobj(a):
        raise BagInputError(f"Complex data not supported: {name} has dtype {a.dtype}")
    if a.dtype not in (np.float32, np.float16):
        try:
            a = a.astype(np.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} has dtype {a.dtype}; bags hold numeric tile features ({exc})") from exc
    if a.ndim != 2:
        raise BagInputError(
            f"{name} has shape {a.shape}; each bag must be a 2-D (n_tiles, d) array of tile features"
        )
    if a.shape[0] == 0:
        raise BagInputError(f"{name} has no tiles; drop empty bags before fitting or predicting")
    if a.shape[1] == 0:
        raise BagInputError(
            f"0 feature(s) (shape=({a.shape[0]}, 0)) while a minimum of 1 is required: {name} has no features"
        )
    return a


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


def check_groups(groups, n_bags: int) -> np.ndarray:
    """``groups`` as an array of ``n_bags`` entries; None makes every bag its own group."""
    groups = np.arange(n_bags) if groups is None else np.asarray(groups)
    if len(groups) != n_bags:
        raise BagInputError(f"groups has {len(groups)} entries but there are {n_bags} bags")
    return groups


def check_device(device: str) -> str:
    """Return ``device`` if it is one :data:`DEVICE_PATTERN` takes, else raise naming the parameter.

    >>> check_device("cuda:1")
    'cuda:1'
    """
    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise BagInputError(f"device must be auto, cpu or cuda (cuda:<i> for one GPU); got {device!r}")
    return device


#: The kinds of value :func:`check_param` tells apart.
PARAM_KINDS = ("integer", "number", "integer or None", "number or None")


def check_param(who: str, name: str, value, kind: str) -> None:
    """Raise :class:`BagInputError` naming ``name`` unless ``value`` is of ``kind`` (one of :data:`PARAM_KINDS`).

    >>> try:
    ...     check_param("M", "lr", "fast", "number")
    ... except BagInputError as exc:
    ...     print(exc)
    M: lr must be a number; got 'fast'
    """
    if value is None and kind.endswith("or None"):
        return
    integer = kind.startswith("integer")
    types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, types):
        article = "an" if integer else "a"
        raise BagInputError(f"{who}: {name} must be {article} {kind}; got {value!r}")


def check_params(
    who: str,
    params: dict,
    *,
    kinds: dict[str, str],
    choices: dict[str, tuple] | None = None,
    positive: tuple[str, ...] = (),
) -> None:
    """Check an estimator's ``params`` (``get_params()``) against tables: the kind of each name in ``kinds``
    (:func:`check_param`), the values each name in ``choices`` takes, and the names that must be > 0 when given.

    >>> try:
    ...     check_params("M", {"mode": "x"}, kinds={}, choices={"mode": ("a", "b")})
    ... except BagInputError as exc:
    ...     print(exc)
    M: mode must be 'a' or 'b'; got 'x'
    """
    for name, kind in kinds.items():
        check_param(who, name, params[name], kind)
    for name, values in (choices or {}).items():
        if params[name] not in values:
            allowed = " or ".join(map(repr, values)) if len(values) == 2 else f"one of {values}"
            raise BagInputError(f"{who}: {name} must be {allowed}; got {params[name]!r}")
    for name in positive:
        if params[name] is not None and not params[name] > 0:
            raise BagInputError(f"{who}: {name} must be > 0; got {params[name]!r}")
