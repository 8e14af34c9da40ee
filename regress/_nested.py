"""``NestedMIL``: attention-MIL whose data-dependent choices are made by inner patient-grouped cross-validation
inside the bags it is fitted on, never on the bags it will predict.

One ``fit`` splits the training patients into ``n_inner`` groups-folds. For every candidate setting of ``grid`` and
every inner fold it trains one network on the other folds, early-stopped on this fold (so the number of epochs is
chosen on patients the network does not train on), and records this fold's *out-of-fold* readout features
(:mod:`~slide2expr.regress._readout`). From the out-of-fold features of all training patients it then chooses, per
gene, the candidate and the readout with the lowest out-of-fold squared error — the network's own output, or a
ridge *stack* of the readout features (its penalty chosen by leave-one-out, its error measured by leave-one-out) —
and fits that stack on them. The inner folds' networks are the ensemble that predicts: their readout features are
averaged and the gene's chosen readout applied.

The cost is ``len(grid candidates) × n_inner`` networks per fit, each on ``(n_inner - 1) / n_inner`` of the
patients (a seed ensemble of ``n_inner`` members costs as much).
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, RegressorMixin, clone
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, ParameterGrid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state, get_tags
from sklearn.utils.validation import check_is_fitted

from slide2expr.regress._checks import BagInputError, check_bags, check_groups, check_targets
from slide2expr.regress._meta import MAX_SEED, TileScores, merge_tile_scores
from slide2expr.regress._readout import FEATURES, learn_thresholds, readout_features

#: The readouts a gene can be given: the network's own bag output, or a ridge stack of the readout features.
READOUTS = ("output", "stack")
#: Penalties the stack's leave-one-out search tries (on standardised features).
STACK_ALPHAS = tuple(np.logspace(-2, 4, 25))


class NestedMIL(MetaEstimatorMixin, RegressorMixin, BaseEstimator):
    """An attention-MIL network with nested selection of its settings and bag readout, and an inner-fold ensemble.

    Parameters
    ----------
    estimator : AttentionMILRegressor
        The network (its ``fit`` takes ``eval_set``); ``random_state`` is set per inner fold.
    n_inner : int
        Inner patient-grouped folds (fewer when there are fewer patients; at least 2).
    grid : dict of str to list, or None
        Candidate values of ``estimator`` parameters (``ParameterGrid``), e.g. ``{"pca_components": [8, 16]}``;
        None: ``estimator`` as given.
    readouts : tuple of str
        The readouts (:data:`READOUTS`) each gene chooses among.
    random_state : int, RandomState or None
        Seed of the inner folds and of the networks' seeds.

    Attributes
    ----------
    members_ : dict of int to list of (estimator, thresholds)
        The fitted inner-fold networks of each candidate some gene uses, with their readout thresholds.
    choice_ : list of (int, str)
        Per gene (column of ``y``): the candidate index and the readout chosen.
    stacks_ : dict of int to Pipeline
        Per gene with the ``"stack"`` readout, the fitted ``StandardScaler → RidgeCV`` over :data:`FEATURES`.
    selection_ : list of dict
        Per gene, candidate and readout: the out-of-fold mean squared error that the choice compared.
    candidates_ : list of dict
    y_mean_ : ndarray of shape (n_genes,)
        The targets' mean over the bags it was fitted on.

    Examples
    --------
    >>> from slide2expr.regress import AttentionMILRegressor
    >>> rng = np.random.default_rng(0)
    >>> bags = [rng.normal(size=(int(rng.integers(5, 15)), 6)).astype("float32") for _ in range(24)]
    >>> y = np.array([b[:, 0].mean() for b in bags])
    >>> net = AttentionMILRegressor(max_epochs=3, min_epochs=0, patience=2, device="cpu")
    >>> model = NestedMIL(net, n_inner=3, random_state=0).fit(bags, y)
    >>> model.predict(bags[:4]).shape, len(model.members_[0]), model.choice_[0][1] in READOUTS
    ((4,), 3, True)
    """

    def __init__(self, estimator, *, n_inner: int = 5, grid=None, readouts=READOUTS, random_state=None):
        self.estimator = estimator
        self.n_inner = n_inner
        self.grid = grid
        self.readouts = readouts
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.input_tags = copy.deepcopy(inner.input_tags)
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True
        tags.non_deterministic = inner.non_deterministic
        return tags

    def _check(self) -> list[dict]:
        k = self.n_inner
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 2:
            raise BagInputError(f"NestedMIL: n_inner must be an integer ≥ 2; got {k!r}")
        bad = [r for r in self.readouts if r not in READOUTS] if not isinstance(self.readouts, str) else [0]
        if bad or not self.readouts:
            raise BagInputError(f"NestedMIL: readouts must be some of {READOUTS}; got {self.readouts!r}")
        try:
            return list(ParameterGrid(self.grid or {}))
        except (TypeError, ValueError) as exc:
            raise BagInputError(
                f"NestedMIL: grid must map parameter names to lists of values ({exc})"
            ) from exc

    def fit(self, bags, y, groups=None):
        """Fit the inner-fold networks of every candidate, choose each gene's candidate and readout on their
        out-of-fold readout features, and fit the chosen stacks. Returns ``self``."""
        candidates = self._check()
        bags = check_bags(bags, who="NestedMIL")
        Y, self._y_was_1d = check_targets(y, len(bags), who="NestedMIL")
        groups = check_groups(groups, len(bags))
        n_groups = len(np.unique(groups))
        k = min(int(self.n_inner), n_groups)
        if k < 2:
            raise BagInputError(
                f"NestedMIL: the inner cross-validation needs at least 2 patients; got {n_groups}"
            )
        rs = check_random_state(self.random_state)
        splits = list(
            GroupKFold(n_splits=k, shuffle=True, random_state=rs.randint(MAX_SEED)).split(bags, Y, groups)
        )
        seeds = rs.randint(0, MAX_SEED, size=k)
        self.n_features_in_, self.candidates_ = bags[0].shape[1], candidates
        self.y_mean_ = np.nanmean(Y, axis=0)
        oof, members = {}, {}
        for c, params in enumerate(candidates):
            oof[c] = np.full((len(bags), Y.shape[1], len(FEATURES)), np.nan)
            members[c] = []
            for (tr, va), seed in zip(splits, seeds, strict=True):
                est = clone(self.estimator).set_params(**params, random_state=int(seed))
                tr_bags, va_bags = [bags[i] for i in tr], [bags[i] for i in va]
                est.fit(tr_bags, Y[tr], groups=groups[tr], eval_set=(va_bags, Y[va]))
                thresholds = learn_thresholds(est, tr_bags, Y[tr])
                oof[c][va] = readout_features(est, va_bags, thresholds=thresholds)
                members[c].append((est, thresholds))
        self._select(oof, Y)
        used = {c for c, _ in self.choice_}
        self.members_ = {c: m for c, m in members.items() if c in used}
        return self

    def _select(self, oof: dict, Y: np.ndarray) -> None:
        """Per gene, the (candidate, readout) with the lowest out-of-fold MSE; fits the chosen stacks."""
        self.choice_, self.stacks_, self.selection_ = [], {}, []
        for g in range(Y.shape[1]):
            ok = ~np.isnan(Y[:, g])
            best, best_mse, best_stack = None, np.inf, None
            for c in oof:
                X, yg = oof[c][ok, g, :], Y[ok, g]
                for readout in self.readouts:
                    if readout == "output":
                        mse, stack = float(np.mean((X[:, 0] - yg) ** 2)), None
                    else:
                        stack, mse = _fit_stack(X, yg)
                    self.selection_.append({"gene": g, "candidate": c, "readout": readout, "oof_mse": mse})
                    if mse < best_mse:
                        best, best_mse, best_stack = (c, readout), mse, stack
            self.choice_.append(best)
            if best_stack is not None:
                self.stacks_[g] = best_stack

    def _features(self, bags) -> dict:
        """Per used candidate, the readout features averaged over its members: ``(n_bags, n_genes, n_features)``."""
        return {
            c: np.mean([readout_features(e, bags, thresholds=t) for e, t in m], axis=0)
            for c, m in self.members_.items()
        }

    def predict(self, bags) -> np.ndarray:
        """``(n_bags, n_genes)``, or ``(n_bags,)`` when fitted on 1-D ``y``: each gene's chosen readout of its
        candidate's averaged readout features."""
        check_is_fitted(self, "members_")
        bags = check_bags(bags, n_features=self.n_features_in_, who="NestedMIL")
        F = self._features(bags)
        out = np.empty((len(bags), len(self.choice_)))
        for g, (c, readout) in enumerate(self.choice_):
            out[:, g] = F[c][:, g, 0] if readout == "output" else self.stacks_[g].predict(F[c][:, g, :])
        return out[:, 0] if self._y_was_1d else out

    def predict_tiles(self, bags) -> list[TileScores]:
        """Per bag, each gene's :class:`TileScores` from its candidate's members, averaged field by field."""
        check_is_fitted(self, "members_")
        merged = {
            c: merge_tile_scores(
                [e.predict_tiles(bags) for e, _ in m], lambda parts: np.mean(parts, axis=0).astype(np.float32)
            )
            for c, m in self.members_.items()
        }
        out = []
        for b in range(len(bags)):
            fields = []
            for f in range(3):
                cols = [merged[c][b][f] for c, _ in self.choice_]
                fields.append(
                    None if cols[0] is None else np.column_stack([col[:, g] for g, col in enumerate(cols)])
                )
            out.append(TileScores(*fields))
        return out


def _fit_stack(X: np.ndarray, y: np.ndarray):
    """A ``StandardScaler → RidgeCV`` stack fitted on ``X`` (``(n, n_features)``) and ``y``, and its leave-one-out
    mean squared error at the chosen penalty."""
    stack = make_pipeline(StandardScaler(), RidgeCV(alphas=STACK_ALPHAS, store_cv_results=True))
    stack.fit(X, y)
    ridge = stack[-1]
    mse = float(ridge.cv_results_[:, list(STACK_ALPHAS).index(ridge.alpha_)].mean())
    return stack, mse
