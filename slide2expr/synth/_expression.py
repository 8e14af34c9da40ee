"""The expression model of the synthetic cohort: which compartments drive which of the paper's 35 genes.

For patient p and gene g::

    log1p(TPM[p, g]) = intercept[g] + sum_c coef[g, c] * frac[p, c] + noise[p, g],   noise ~ N(0, noise_sd[g]²)

where ``frac[p, c]`` is the share of the patient's tissue (all its slides pooled, by area) in compartment c. The
coefficients are scaled so that the drivers explain a chosen share ``r2`` (0.80–0.90) of the log-expression variance
under the cohort's composition prior; noise genes have no driver at all (negative controls).
"""

from __future__ import annotations

import numpy as np

from slide2expr.synth._compartments import HOTSPOT_COMPARTMENTS, MAIN_COMPARTMENTS, TISSUE_COMPARTMENTS

#: The paper's gene panel (Graziani et al. 2022), in the order of its code.
GENES: tuple[str, ...] = (
    "SEMA5A", "CTTNBP2", "WARS", "POFUT1", "QPRT", "PLAGL2", "TP53RK", "DDX27", "FSCN1", "TIMP3", "VAV2", "RBMS1",
    "ASRGL1", "SPINK4", "RAB34", "MGP", "TNS1", "SDC2", "LYZ", "TRIB2", "ATP9A", "ARMCX1", "RASD1", "GNLY",
    "CCDC80", "B3GNT6", "TP53", "APC", "AXIN2", "CXCR4", "CDHR1", "DNMT3B", "DACH1", "FBN1", "CAPN9",
)  # fmt: skip

#: Driver compartments and their relative weights, with the reason (plausible biology, simplified).
GENE_DRIVERS: dict[str, tuple[dict[str, float], str]] = {
    # tumour epithelium: colorectal cancer cell genes (Wnt targets, 20q amplicon, epithelial enzymes)
    "PLAGL2": ({"tumour": 1.0}, "oncogene amplified and overexpressed in colorectal tumour epithelium"),
    "POFUT1": ({"tumour": 1.0}, "20q13 amplicon gene expressed by tumour epithelium"),
    "DDX27": ({"tumour": 1.0}, "20q13 amplicon gene expressed by tumour epithelium"),
    "TP53RK": ({"tumour": 1.0}, "20q13 amplicon gene expressed by tumour epithelium"),
    "ATP9A": ({"tumour": 1.0}, "20q13 amplicon gene expressed by tumour epithelium"),
    "ASRGL1": ({"tumour": 1.0}, "epithelial enzyme"),
    "AXIN2": ({"tumour": 1.0}, "Wnt target gene in tumour epithelium"),
    "DNMT3B": ({"tumour": 1.0}, "overexpressed in proliferating tumour epithelium"),
    "QPRT": ({"tumour": 1.0}, "epithelial metabolic enzyme"),
    "CDHR1": ({"tumour": 1.0}, "brush-border cadherin of intestinal epithelium"),
    # stroma: fibroblast and extracellular-matrix genes
    "FBN1": ({"stroma": 1.0}, "fibrillin, extracellular matrix made by fibroblasts"),
    "MGP": ({"stroma": 1.0}, "matrix Gla protein, stromal"),
    "TIMP3": ({"stroma": 1.0}, "stromal metalloproteinase inhibitor"),
    "CCDC80": ({"stroma": 1.0}, "fibroblast-expressed matrix gene"),
    "TNS1": ({"stroma": 1.0}, "tensin, focal adhesions of fibroblasts and smooth muscle"),
    "RBMS1": ({"stroma": 1.0}, "expressed in cancer-associated fibroblasts"),
    "SDC2": ({"stroma": 1.0}, "syndecan-2, mesenchymal"),
    "SEMA5A": ({"stroma": 1.0}, "semaphorin expressed in stroma"),
    # lymphocyte-dense tissue: immune genes
    "GNLY": ({"lymphocytes": 1.0}, "granulysin, cytotoxic T and NK cells"),
    "CXCR4": ({"lymphocytes": 1.0}, "chemokine receptor on lymphocytes"),
    "VAV2": ({"lymphocytes": 1.0}, "immune signalling"),
    "LYZ": ({"lymphocytes": 1.0, "necrosis": 0.7}, "lysozyme, macrophages in inflamed and necrotic tissue"),
    # mucin: goblet-cell genes of mucinous adenocarcinoma
    "SPINK4": ({"mucin": 1.0}, "goblet-cell gene, high in mucinous tumours"),
    "B3GNT6": ({"mucin": 1.0}, "core-3 O-glycan synthase of mucins"),
    "CAPN9": ({"mucin": 1.0}, "digestive-tract calpain, goblet and mucinous cells"),
    # necrosis
    "RASD1": ({"necrosis": 1.0}, "stress-induced gene, synthetic stand-in for hypoxia next to necrosis"),
    # hotspots: small planted regions
    "WARS": ({"tls": 1.0}, "interferon-gamma induced, high in tertiary lymphoid structures"),
    "TRIB2": ({"tls": 1.0}, "synthetic stand-in for a lymphoid-aggregate gene"),
    "FSCN1": ({"high_grade": 1.0}, "fascin, marker of tumour budding and high-grade invasive fronts"),
    "RAB34": ({"high_grade": 1.0}, "synthetic stand-in for an invasive-front gene"),
    "CTTNBP2": ({"high_grade": 1.0}, "synthetic stand-in for an invasive-front gene"),
    # negative controls
    "TP53": ({}, "negative control: expression independent of morphology here"),
    "APC": ({}, "negative control: expression independent of morphology here"),
    "DACH1": ({}, "negative control: expression independent of morphology here"),
    "ARMCX1": ({}, "negative control: expression independent of morphology here"),
}

#: Dirichlet concentration of the main-compartment composition of a patient's tissue.
COMPOSITION_ALPHA = {"tumour": 3.0, "stroma": 3.0, "lymphocytes": 1.2, "mucin": 0.8, "necrosis": 0.8}
#: Hotspot share of the tissue: zero with this probability, else uniform in (HOTSPOT_MIN, HOTSPOT_MAX).
HOTSPOT_ZERO_P = 0.15
HOTSPOT_MIN, HOTSPOT_MAX = 0.005, 0.10


def gene_kind(gene: str) -> str:
    drivers = GENE_DRIVERS[gene][0]
    if not drivers:
        return "noise"
    return "hotspot" if any(c in HOTSPOT_COMPARTMENTS for c in drivers) else "compartment"


def draw_patient_composition(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float]]:
    """Draw a patient's target main-compartment composition and hotspot shares from the cohort prior."""
    alpha = np.array([COMPOSITION_ALPHA[c] for c in MAIN_COMPARTMENTS])
    comp = rng.dirichlet(alpha)
    hot = {}
    for name in HOTSPOT_COMPARTMENTS:
        hot[name] = 0.0 if rng.random() < HOTSPOT_ZERO_P else float(rng.uniform(HOTSPOT_MIN, HOTSPOT_MAX))
    return dict(zip(MAIN_COMPARTMENTS, comp.tolist(), strict=True)), hot


def prior_fractions(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    """(n, n_tissue_compartments) tissue fractions drawn from the prior, hotspots carved out of the main ones."""
    out = np.empty((n, len(TISSUE_COMPARTMENTS)))
    for i in range(n):
        comp, hot = draw_patient_composition(rng)
        rest = 1.0 - sum(hot.values())
        out[i] = [comp[c] * rest for c in MAIN_COMPARTMENTS] + [hot[c] for c in HOTSPOT_COMPARTMENTS]
    return out


def expression_model(rng: np.random.Generator) -> dict[str, dict]:
    """Draw the per-gene model: kind, drivers, coefficients, intercept, noise sd, designed r2.

    Coefficients are on the fraction scale (0–1) and positive; ``signal_sd`` (0.5–0.9 log units) is the sd of
    ``coef · frac`` under the prior, and ``noise_sd = signal_sd * sqrt((1 - r2) / r2)``.
    """
    prior = prior_fractions(np.random.default_rng(rng.integers(2**63)))
    col = {c: i for i, c in enumerate(TISSUE_COMPARTMENTS)}
    genes = {}
    for g in GENES:
        drivers, why = GENE_DRIVERS[g]
        mean_log = float(rng.uniform(2.5, 6.0))
        if drivers:
            r2 = float(rng.uniform(0.80, 0.90))
            signal_sd = float(rng.uniform(0.5, 0.9))
            w = np.array([drivers[c] for c in drivers])
            raw = prior[:, [col[c] for c in drivers]] @ w
            scale = signal_sd / raw.std()
            coefs = {c: float(drivers[c] * scale) for c in drivers}
            intercept = mean_log - float(raw.mean() * scale)
            noise_sd = signal_sd * float(np.sqrt((1 - r2) / r2))
        else:
            r2, signal_sd, coefs = 0.0, 0.0, {}
            intercept = mean_log
            noise_sd = float(rng.uniform(0.4, 0.8))
        genes[g] = {
            "kind": gene_kind(g),
            "drivers": list(drivers),
            "coefficients": coefs,
            "intercept": intercept,
            "noise_sd": noise_sd,
            "signal_sd_prior": signal_sd,
            "r2_design": r2,
            "biology": why,
        }
    return genes


def simulate_expression(fracs: np.ndarray, model: dict[str, dict], rng: np.random.Generator):
    """log1p(TPM) per patient and gene.

    Parameters
    ----------
    fracs : (n_patients, n_tissue_compartments) tissue fractions in ``TISSUE_COMPARTMENTS`` order.
    model : from :func:`expression_model`.

    Returns
    -------
    (n_patients, n_genes) float64 log1p(TPM), clipped at 0, genes in ``GENES`` order.
    """
    col = {c: i for i, c in enumerate(TISSUE_COMPARTMENTS)}
    out = np.empty((fracs.shape[0], len(GENES)))
    for j, g in enumerate(GENES):
        m = model[g]
        val = np.full(fracs.shape[0], m["intercept"])
        for c, b in m["coefficients"].items():
            val += b * fracs[:, col[c]]
        val += rng.normal(0.0, m["noise_sd"], fracs.shape[0])
        out[:, j] = np.clip(val, 0.0, None)
    return out
