"""Tissue compartments of the synthetic cohort: ids, names, and what they stand for."""

from __future__ import annotations

#: Label value of glass (no tissue) in the label maps.
BACKGROUND = 0

#: Label values of the tissue compartments, in label-map order (index = label value).
COMPARTMENTS: tuple[str, ...] = (
    "background",
    "tumour",  # tumour epithelium: glands, rings of columnar purple nuclei around pale lumens
    "stroma",  # pink collagen fibres with sparse spindle nuclei
    "lymphocytes",  # lymphocyte-dense regions: small round dark nuclei in loose stroma
    "mucin",  # pale blue-grey wispy mucin pools with a few floating cells
    "necrosis",  # pink-grey debris with fragmented nuclei
    "tls",  # hotspot: tertiary lymphoid aggregates, tightly packed very dark lymphocytes
    "high_grade",  # hotspot: solid high-grade epithelium (budding front), large pleomorphic nuclei, no lumens
)

#: Compartments that make up the bulk of the tissue; their proportions vary between patients.
MAIN_COMPARTMENTS: tuple[str, ...] = ("tumour", "stroma", "lymphocytes", "mucin", "necrosis")

#: Small distinctive compartments planted as blobs covering 0 to ~10 % of a patient's tissue each.
HOTSPOT_COMPARTMENTS: tuple[str, ...] = ("tls", "high_grade")

TISSUE_COMPARTMENTS: tuple[str, ...] = MAIN_COMPARTMENTS + HOTSPOT_COMPARTMENTS

LABEL = {name: i for i, name in enumerate(COMPARTMENTS)}
