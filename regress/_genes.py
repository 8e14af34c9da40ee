"""Gene names and gene selection: named panels, gene files, did-you-mean, and the per-fold top-N rule of ``compare``.

A comparison's genes are chosen in two steps. Fixed choices (a panel, a file or list of names, protein-coding
only) use no expression value and are applied once, before the folds. A top-N choice (the ``top_genes`` genes of
highest variance or mean) uses expression values, so it is made inside each fold on the training patients only
(:func:`top_genes_of`); a gene chosen in some folds only is reported pooled over the folds that chose it, with their
count (``folds_selected`` in ``metrics.parquet``).

>>> PANELS["graziani2022"][:3], len(PANELS["graziani2022"])
(('SEMA5A', 'CTTNBP2', 'WARS'), 35)
>>> did_you_mean(["GNLYY", "fbn1", "XYZ"], ["GNLY", "FBN1", "MGP"])
{'GNLYY': 'GNLY', 'fbn1': 'FBN1'}
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The 35 genes of Graziani et al. 2022 (recoverable from their code), in their order.
GRAZIANI2022_GENES = (
    "SEMA5A",
    "CTTNBP2",
    "WARS",
    "POFUT1",
    "QPRT",
    "PLAGL2",
    "TP53RK",
    "DDX27",
    "FSCN1",
    "TIMP3",
    "VAV2",
    "RBMS1",
    "ASRGL1",
    "SPINK4",
    "RAB34",
    "MGP",
    "TNS1",
    "SDC2",
    "LYZ",
    "TRIB2",
    "ATP9A",
    "ARMCX1",
    "RASD1",
    "GNLY",
    "CCDC80",
    "B3GNT6",
    "TP53",
    "APC",
    "AXIN2",
    "CXCR4",
    "CDHR1",
    "DNMT3B",
    "DACH1",
    "FBN1",
    "CAPN9",
)
#: Named gene panels that ``genes=`` accepts.
PANELS: dict[str, tuple[str, ...]] = {"graziani2022": GRAZIANI2022_GENES}
#: Current HGNC symbols of panel genes renamed since the paper (GENCODE v36, as in GDC STAR-counts, uses these).
PANEL_ALIASES = {"WARS": ("WARS1",)}
#: ``genes=`` value that takes every gene of the targets, however many.
ALL_GENES = "all"
#: What ``rank_genes_by=`` takes: the training patients' variance or mean of each gene's (transformed) values.
RANKINGS = ("variance", "mean")
#: Above this many genes and with no choice made, ``compare`` keeps the top :data:`DEFAULT_TOP_GENES` by variance.
MAX_GENES_WITHOUT_SELECTION = 2000
DEFAULT_TOP_GENES = 2000
#: Attention is recorded for at most this many genes per fold (``attention.parquet`` grows with tiles × genes): a
#: fold's genes when that few, else those of highest ``rank_genes_by`` on its training patients.
MAX_ATTENTION_GENES = 50
#: The GENCODE gene type that ``protein_coding=True`` keeps.
PROTEIN_CODING = "protein_coding"
#: Items a message lists before "… (+n more)"; unknown names that get a did-you-mean.
MAX_LISTED = 12


class GeneSelectionError(ValueError):
    """A gene choice that cannot be made: unknown names (with a did-you-mean), an empty list, a bad ``top_genes``."""


class GeneSelectionWarning(UserWarning):
    """The targets hold many genes and no choice was made: ``compare`` keeps the top genes by variance per fold."""


def listing(items: Sequence[str]) -> str:
    """``a, b, c … (+n more)`` after :data:`MAX_LISTED` items.

    >>> listing([str(i) for i in range(14)])
    '0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 … (+2 more)'
    """
    items = list(items)
    more = f" … (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(map(str, items[:MAX_LISTED])) + more


def did_you_mean(unknown: Sequence[str], known: Sequence[str]) -> dict[str, str]:
    """For each of the first :data:`MAX_LISTED` ``unknown`` names, the ``known`` name it most likely means: the same
    name in another case, else the closest spelling (``difflib``, ratio ≥ 0.7); names with no candidate are left
    out."""
    known = list(dict.fromkeys(known))
    folded = {k.upper(): k for k in known}
    out = {}
    for name in list(unknown)[:MAX_LISTED]:
        if name.upper() in folded:
            out[name] = folded[name.upper()]
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        if close:
            out[name] = close[0]
    return out


def unknown_genes_message(unknown: Sequence[str], known: Sequence[str], *, where: str) -> str:
    """``gene(s) not in <where>: A, B; did you mean A → A1?`` (the second part only when a name is close).

    >>> unknown_genes_message(["GNLYY", "XYZ"], ["GNLY"], where="the matrix")
    'gene(s) not in the matrix: GNLYY, XYZ; did you mean GNLYY → GNLY?'
    """
    hints = did_you_mean(unknown, known)
    hint = "; did you mean " + ", ".join(f"{a} → {b}" for a, b in hints.items()) + "?" if hints else ""
    return f"gene(s) not in {where}: {listing(unknown)}{hint}"


def read_gene_file(path: str | os.PathLike) -> tuple[str, ...]:
    """Gene names from a text file: separated by newlines, commas, tabs or spaces; ``#`` starts a comment.

    Raises :class:`GeneSelectionError` for a missing, unreadable or empty file, or a name listed twice.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise GeneSelectionError(f"genes file {path} cannot be read: {exc}") from None
    names = [
        tok for line in text.splitlines() for tok in line.split("#", 1)[0].replace(",", " ").split() if tok
    ]
    if not names:
        raise GeneSelectionError(f"genes file {path} holds no gene names (one per line, or comma-separated)")
    return check_unique(names, what=f"genes file {path}")


def check_unique(names: Sequence[str], *, what: str) -> tuple[str, ...]:
    """``names`` as a tuple; :class:`GeneSelectionError` when one is listed twice."""
    seen, dup = set(), []
    for n in names:
        if n in seen:
            dup.append(n)
        seen.add(n)
    if dup:
        raise GeneSelectionError(f"{what} lists gene(s) twice: {listing(sorted(set(dup)))}")
    return tuple(names)


def resolve_genes(genes: str | os.PathLike | Sequence[str] | None) -> tuple[str, ...] | str | None:
    """What ``genes=`` names: None (no choice), ``"all"``, or a tuple of names — from a panel (``"graziani2022"``), a
    file of names (a path that exists), a comma-separated string or a list.

    >>> resolve_genes("graziani2022")[:2], resolve_genes("GNLY, FBN1"), resolve_genes(None), resolve_genes("all")
    (('SEMA5A', 'CTTNBP2'), ('GNLY', 'FBN1'), None, 'all')
    """
    if genes is None:
        return None
    if isinstance(genes, os.PathLike) or (isinstance(genes, str) and _is_file(genes)):
        return read_gene_file(genes)
    if isinstance(genes, str):
        if genes in PANELS:
            return PANELS[genes]
        if genes.strip().lower() == ALL_GENES:
            return ALL_GENES
        genes = [g.strip() for g in genes.split(",") if g.strip()]
    genes = tuple(str(g) for g in genes)
    if not genes:
        raise GeneSelectionError(
            "genes= (--genes) is empty: give gene names, a file of names, a panel (graziani2022), or None"
        )
    return check_unique(genes, what="genes= (--genes)")


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except OSError:  # a name too long for the file system is a list of genes
        return False


def panel_name(genes) -> str | None:
    """The panel ``genes`` names, if any."""
    return genes if isinstance(genes, str) and genes in PANELS else None


@dataclass(frozen=True)
class GeneSelection:
    """A comparison's gene choice, checked (:func:`select_genes`).

    Attributes
    ----------
    index
        ``(n_candidates,)`` int: the columns of the cohort's ``y_true`` compared (or ranked per fold).
    genes
        The candidate genes' names, in cohort order (panel or file order for a named list).
    top_genes, rank_genes_by
        Per fold, keep the ``top_genes`` candidates of highest ``rank_genes_by`` on its training patients; None:
        every candidate in every fold.
    source
        The choice in words, for the plan and ``config.json``.
    defaulted
        Whether ``top_genes`` was set because the targets hold more than :data:`MAX_GENES_WITHOUT_SELECTION` genes
        and no choice was made.
    """

    index: np.ndarray
    genes: tuple[str, ...]
    top_genes: int | None
    rank_genes_by: str
    protein_coding: bool
    source: str
    defaulted: bool = False

    def describe(self) -> str:
        """One line: what is compared."""
        what = f"{len(self.genes)} candidate genes ({self.source}{', protein-coding' * self.protein_coding})"
        if self.top_genes is None:
            return what
        how = f" (the default above {MAX_GENES_WITHOUT_SELECTION:,} genes)" if self.defaulted else ""
        return (
            f"{what}; per fold the top {self.top_genes} by {self.rank_genes_by} on its training patients{how}"
        )

    def config(self) -> dict:
        """What ``config.json`` records under ``gene_selection``."""
        return {
            "source": self.source,
            "candidates": len(self.genes),
            "top_genes": self.top_genes,
            "rank_genes_by": self.rank_genes_by if self.top_genes is not None else None,
            "protein_coding": self.protein_coding,
            "defaulted": self.defaulted,
        }


def select_genes(
    cohort_genes: Sequence[str],
    *,
    genes=None,
    top_genes: int | None = None,
    rank_genes_by: str = "variance",
    protein_coding: bool = False,
    gene_types: dict[str, str] | None = None,
) -> GeneSelection:
    """Check a gene choice against the cohort's genes and return it; uses no expression value.

    Parameters
    ----------
    cohort_genes
        The columns of the cohort's ``y_true``.
    genes
        None (every gene; above :data:`MAX_GENES_WITHOUT_SELECTION` genes with no ``top_genes``, the top
        :data:`DEFAULT_TOP_GENES` by variance, which the selection says), ``"all"`` (every gene, however many), a
        panel name, a path to a file of names, a comma-separated string or a list. A panel gene missing under its
        paper name is taken under its current symbol (``WARS`` → ``WARS1``) when the cohort has that.
    top_genes, rank_genes_by
        Keep, per fold, the ``top_genes`` candidates of highest ``"variance"`` or ``"mean"`` on the fold's training
        patients (genes constant there are never kept).
    protein_coding
        Only genes whose ``gene_type`` (from a GDC STAR-counts import: ``gene_types``) is ``protein_coding``.

    Raises
    ------
    GeneSelectionError
        Unknown genes (with a did-you-mean), a bad ``top_genes`` or ``rank_genes_by``, ``protein_coding`` without
        gene types, no gene left.

    Examples
    --------
    >>> s = select_genes(["A", "B", "C"], genes="C,A")
    >>> s.genes, s.index.tolist(), s.top_genes
    (('C', 'A'), [2, 0], None)
    >>> select_genes([f"G{i}" for i in range(3000)]).describe()
    '3000 candidate genes (every gene); per fold the top 2000 by variance on its training patients (the default above 2,000 genes)'
    """
    if rank_genes_by not in RANKINGS:
        raise GeneSelectionError(
            f"rank_genes_by={rank_genes_by!r} (--rank-genes-by): use one of {', '.join(RANKINGS)}"
        )
    if top_genes is not None and (
        isinstance(top_genes, bool) or not isinstance(top_genes, int | np.integer) or top_genes < 1
    ):
        raise GeneSelectionError(f"top_genes={top_genes!r} (--top-genes): give a positive number of genes")
    cohort_genes = [str(g) for g in cohort_genes]
    position = {g: i for i, g in enumerate(cohort_genes)}
    wanted = resolve_genes(genes)
    if wanted is None or wanted == ALL_GENES:
        names = cohort_genes
        source = "every gene"
    else:
        names, unknown = [], []
        for g in wanted:
            alias = next((a for a in PANEL_ALIASES.get(g, ()) if a in position), None)
            if g in position or alias:
                names.append(g if g in position else alias)
            else:
                unknown.append(g)
        if unknown:
            raise GeneSelectionError(unknown_genes_message(unknown, cohort_genes, where="the targets"))
        source = (
            f"panel {genes}"
            if panel_name(genes)
            else f"genes file {genes}"
            if isinstance(genes, os.PathLike) or (isinstance(genes, str) and _is_file(genes))
            else "genes named"
        )
    if protein_coding:
        if not gene_types:
            raise GeneSelectionError(
                "protein_coding (--protein-coding) needs gene types: import the targets from GDC STAR-counts files "
                "(their gene_type column), or choose genes by name"
            )
        names = [g for g in names if gene_types.get(g) == PROTEIN_CODING]
    if not names:
        raise GeneSelectionError(
            "no gene left to compare"
            + (" after protein_coding (no protein_coding gene)" if protein_coding else "")
        )
    defaulted = wanted is None and top_genes is None and len(names) > MAX_GENES_WITHOUT_SELECTION
    if defaulted:
        top_genes = DEFAULT_TOP_GENES
    return GeneSelection(
        index=np.array([position[g] for g in names], dtype=np.int64),
        genes=tuple(names),
        top_genes=None if top_genes is None else int(top_genes),
        rank_genes_by=rank_genes_by,
        protein_coding=bool(protein_coding),
        source=source,
        defaulted=defaulted,
    )


def default_selection_message(n_genes: int) -> str:
    """What :class:`GeneSelectionWarning` says when the default top-N applies."""
    return (
        f"the targets hold {n_genes:,} genes and no choice was made: comparing, per fold, the {DEFAULT_TOP_GENES:,} "
        "of highest variance on its training patients; choose with genes= (a panel, a file of names or a list; "
        "--genes), top_genes= and rank_genes_by= (--top-genes, --rank-genes-by), protein_coding=True "
        "(--protein-coding), or genes='all' (--genes all) for every gene"
    )


def fold_gene_columns(
    y: np.ndarray, folds: np.ndarray, *, n_folds: int, top: int | None, rank_by: str
) -> list[np.ndarray]:
    """Per fold ``k``, the columns of ``y`` (``(n_bags, n_genes)``) it compares: :func:`top_genes_of` of the rows
    not in fold ``k`` (its training patients).

    >>> y = np.array([[0.0, 1.0, 5.0], [0.0, 2.0, 6.0], [1.0, 2.0, 9.0], [0.0, 1.0, 5.0]])
    >>> [c.tolist() for c in fold_gene_columns(y, np.array([0, 0, 1, 1]), n_folds=2, top=1, rank_by="variance")]
    [[2], [1]]
    """
    return [top_genes_of(y[folds != k], top=top, rank_by=rank_by) for k in range(n_folds)]


def attention_columns(y_train: np.ndarray, columns: np.ndarray, *, rank_by: str) -> np.ndarray:
    """The subset of ``columns`` whose attention a fold records: all of them up to :data:`MAX_ATTENTION_GENES`, else
    that many of highest ``rank_by`` on the training rows ``y_train`` (sorted)."""
    if len(columns) <= MAX_ATTENTION_GENES:
        return np.asarray(columns)
    top = top_genes_of(y_train[:, columns], top=MAX_ATTENTION_GENES, rank_by=rank_by)
    if len(top) < MAX_ATTENTION_GENES:  # fewer genes vary than recorded: the first columns fill up
        rest = np.setdiff1d(np.arange(len(columns)), top)[: MAX_ATTENTION_GENES - len(top)]
        top = np.sort(np.concatenate([top, rest]))
    return np.asarray(columns)[top]


def top_genes_of(y_train: np.ndarray, *, top: int | None, rank_by: str = "variance") -> np.ndarray:
    """Columns of ``y_train`` (``(n_train_bags, n_genes)``) to keep: the ``top`` of highest ``rank_by`` among the
    columns that vary, in column order; every column when ``top`` is None. Ties keep the earlier column.

    >>> y = np.array([[0.0, 1.0, 5.0, 2.0], [0.0, 3.0, 5.0, 2.5], [0.0, 9.0, 5.0, 2.0]])
    >>> top_genes_of(y, top=2).tolist(), top_genes_of(y, top=1, rank_by="mean").tolist()
    ([1, 3], [1])
    """
    n = y_train.shape[1]
    if top is None:
        return np.arange(n)
    var = np.var(y_train, axis=0)
    score = var if rank_by == "variance" else np.mean(y_train, axis=0)
    varying = np.flatnonzero(var > 0)
    order = varying[np.argsort(-score[varying], kind="stable")]
    return np.sort(order[:top])
