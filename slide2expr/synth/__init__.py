"""The synthetic demo cohort: H&E-like pyramidal slides, patients, expression with planted drivers, ground truth.

>>> from slide2expr.synth import GENES, COMPARTMENTS
>>> len(GENES), COMPARTMENTS[0]
(35, 'background')
"""

from __future__ import annotations

from slide2expr.synth._cohort import (
    SLIDE_KINDS,
    CohortInfo,
    CohortParams,
    check_cohort,
    make_cohort,
    patient_id,
)
from slide2expr.synth._compartments import (
    COMPARTMENTS,
    HOTSPOT_COMPARTMENTS,
    MAIN_COMPARTMENTS,
    TISSUE_COMPARTMENTS,
)
from slide2expr.synth._expression import GENE_DRIVERS, GENES, gene_kind
from slide2expr.synth._slide import SlideWriteError
from slide2expr.synth._truth import (
    CohortError,
    load_label_map,
    patient_truth,
    read_truth,
    tile_truth,
    write_truth_tiles,
)

__all__ = [
    "COMPARTMENTS",
    "GENES",
    "GENE_DRIVERS",
    "HOTSPOT_COMPARTMENTS",
    "MAIN_COMPARTMENTS",
    "SLIDE_KINDS",
    "TISSUE_COMPARTMENTS",
    "CohortError",
    "CohortInfo",
    "CohortParams",
    "SlideWriteError",
    "check_cohort",
    "gene_kind",
    "load_label_map",
    "make_cohort",
    "patient_id",
    "patient_truth",
    "read_truth",
    "tile_truth",
    "write_truth_tiles",
]
