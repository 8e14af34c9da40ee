"""Patient and sample ids: TCGA barcodes parsed into their parts, and the rule that pairs slides with samples.

A TCGA barcode names a patient (``TCGA-AA-3511``), then a sample (``-01A``: sample type ``01``, vial ``A``), then a
portion (``-01``) with an analyte letter for molecular aliquots (``-11R-A41B-07``: RNA, plate, centre) or a slide
(``-01-TS1``: top frozen section; ``-00-DX1`` with vial ``Z``: a diagnostic FFPE slide of the sample type, from no
particular vial or portion). Slide file names append a UUID after a dot, which is ignored.

>>> b = parse_tcga("TCGA-AA-3511-01A-01-TS1")
>>> b.patient, b.sample_type, b.vial, b.portion, b.slide_type, b.kind
('TCGA-AA-3511', '01', 'A', '01', 'TS', 'tumor')
>>> parse_tcga("TCGA-AA-3511-11A-01R-A41B-07").kind
'normal'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

_TCGA = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(-\d{2}[A-Z]?)?", re.IGNORECASE)
_BARCODE = re.compile(
    r"^(?P<patient>TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})"
    r"(?:-(?P<sample_type>\d{2})(?P<vial>[A-Z])?"
    r"(?:-(?P<portion>\d{2})(?:(?P<analyte>[A-Z])(?:-(?P<plate>[A-Z0-9]{4})(?:-(?P<center>\d{2}))?)?"
    r"|-(?P<slide_type>[A-Z]{2})(?P<slide_order>[A-Z0-9]+))?)?)?"
    r"(?=$|[.\s_])",
    re.IGNORECASE,
)

#: TCGA sample type codes (the GDC's code table) and their names.
SAMPLE_TYPES = {
    "01": "Primary Solid Tumor",
    "02": "Recurrent Solid Tumor",
    "03": "Primary Blood Derived Cancer - Peripheral Blood",
    "04": "Recurrent Blood Derived Cancer - Bone Marrow",
    "05": "Additional - New Primary",
    "06": "Metastatic",
    "07": "Additional Metastatic",
    "08": "Human Tumor Original Cells",
    "09": "Primary Blood Derived Cancer - Bone Marrow",
    "10": "Blood Derived Normal",
    "11": "Solid Tissue Normal",
    "12": "Buccal Cell Normal",
    "13": "EBV Immortalized Normal",
    "14": "Bone Marrow Normal",
    "20": "Control Analyte",
    "40": "Recurrent Blood Derived Cancer - Peripheral Blood",
    "50": "Cell Lines",
    "60": "Primary Xenograft Tissue",
    "61": "Cell Line Derived Xenograft Tissue",
}
#: Sample kinds by the tens of the sample type code: 01–09 tumour, 10–19 normal, 20–29 control, others "other".
SAMPLE_KINDS = ("tumor", "normal", "control", "other")
#: TCGA slide types: diagnostic (FFPE) and the frozen sections cut above, below or within a portion.
SLIDE_TYPES = {"DX": "diagnostic", "TS": "top frozen", "BS": "bottom frozen", "MS": "middle frozen"}
#: Named groups of slide types that ``slide_types=`` takes besides the codes.
SLIDE_TYPE_GROUPS = {"diagnostic": ("DX",), "frozen": ("TS", "BS", "MS")}
#: How finely slides pair with samples: the sample type only, also the vial, or also the portion (the default: every
#: code both barcodes carry).
PAIR_LEVELS = ("sample_type", "vial", "portion")
#: A diagnostic slide's vial and portion: the sample type's FFPE block, no particular vial or portion.
ANY_VIAL, ANY_PORTION = "Z", "00"


def tcga_patient(barcode: str) -> str | None:
    """The patient part of a TCGA barcode, or None when ``barcode`` is not one.

    >>> tcga_patient("TCGA-AA-3511-01A-01-TS1")
    'TCGA-AA-3511'
    >>> tcga_patient("slide_7") is None
    True
    """
    m = _TCGA.match(barcode or "")
    return m.group(1).upper() if m else None


def tcga_sample(barcode: str) -> str | None:
    """The sample part of a TCGA barcode (patient + sample type + vial), e.g. ``TCGA-AA-3511-01A``.

    >>> tcga_sample("TCGA-AA-3511-01A-01-TS1")
    'TCGA-AA-3511-01A'
    """
    m = _TCGA.match(barcode or "")
    if not m or not m.group(2):
        return None
    return (m.group(1) + m.group(2)).upper()


def sample_kind(code: str | None) -> str | None:
    """``"tumor"`` (01–09), ``"normal"`` (10–19), ``"control"`` (20–29) or ``"other"``; None for no code.

    >>> sample_kind("01"), sample_kind("11"), sample_kind("20"), sample_kind("60"), sample_kind(None)
    ('tumor', 'normal', 'control', 'other', None)
    """
    if code is None:
        return None
    tens = int(code) // 10
    return SAMPLE_KINDS[tens] if tens < 3 and int(code) > 0 else "other"


def sample_type_name(code: str | None) -> str:
    """``"01 (Primary Solid Tumor)"``; ``"no sample type"`` for None.

    >>> sample_type_name("11")
    '11 (Solid Tissue Normal)'
    """
    if code is None:
        return "no sample type"
    return f"{code} ({SAMPLE_TYPES.get(code, sample_kind(code))})"


@dataclass(frozen=True)
class TcgaBarcode:
    """The parts of a TCGA barcode; the parts a barcode does not carry are None."""

    patient: str
    sample_type: str | None = None
    vial: str | None = None
    portion: str | None = None
    analyte: str | None = None
    plate: str | None = None
    center: str | None = None
    slide_type: str | None = None
    slide_order: str | None = None

    @property
    def sample(self) -> str | None:
        """``TCGA-AA-3511-01A`` (or ``TCGA-AA-3511-01`` without a vial); None without a sample type."""
        if self.sample_type is None:
            return None
        return f"{self.patient}-{self.sample_type}{self.vial or ''}"

    @property
    def kind(self) -> str | None:
        """:func:`sample_kind` of the sample type."""
        return sample_kind(self.sample_type)


def parse_tcga(barcode: str) -> TcgaBarcode | None:
    """The parts of a TCGA barcode (sample, aliquot or slide; a slide file's ``.<uuid>`` suffix ignored), or None.

    >>> parse_tcga("TCGA-AA-3511-01Z-00-DX1.8b3b1f7d-0a4c-4e6b-9d1e-1234567890ab").slide_type
    'DX'
    >>> parse_tcga("TCGA-AA-3511-01A").portion is None, parse_tcga("sample 7") is None
    (True, True)
    """
    m = _BARCODE.match((barcode or "").strip())
    if m is None:
        return None
    parts = {k: (v.upper() if v else None) for k, v in m.groupdict().items()}
    return TcgaBarcode(**parts)


def resolve_slide_types(slide_types: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``None``/``"all"`` (every slide), codes (``"DX"``, ``"TS,BS"``) or groups (``"diagnostic"``, ``"frozen"``).

    Raises ValueError naming ``slide_types`` for anything else.

    >>> resolve_slide_types("frozen"), resolve_slide_types("dx"), resolve_slide_types(None)
    (('TS', 'BS', 'MS'), ('DX',), None)
    """
    if slide_types is None:
        return None
    items = [s.strip() for s in slide_types.split(",")] if isinstance(slide_types, str) else list(slide_types)
    items = [str(s).strip() for s in items if str(s).strip()]
    if not items or [s.lower() for s in items] == ["all"]:
        return None
    codes: list[str] = []
    for s in items:
        if s.lower() in SLIDE_TYPE_GROUPS:
            codes.extend(SLIDE_TYPE_GROUPS[s.lower()])
        elif s.upper() in SLIDE_TYPES:
            codes.append(s.upper())
        else:
            raise ValueError(
                f"slide_types={slide_types!r} (--slide-types): {s!r} is no TCGA slide type; use codes "
                f"({', '.join(SLIDE_TYPES)}), diagnostic, frozen, or all"
            )
    return tuple(dict.fromkeys(codes))


def slide_sample_mismatch(slide: str, sample: str, *, pair_by: str = "portion") -> str | None:
    """Why ``slide`` and ``sample`` (ids of the same patient) do not pair; None when they pair.

    They pair when their sample type codes are equal and, up to ``pair_by``, the vials and then the portions are
    equal wherever both barcodes carry them (a diagnostic slide's vial ``Z`` and portion ``00`` match any). An id
    that is no TCGA barcode, or carries no sample type, pairs with every id of its patient.

    >>> slide_sample_mismatch("TCGA-AA-3511-01Z-00-DX1", "TCGA-AA-3511-01B") is None
    True
    >>> slide_sample_mismatch("TCGA-AA-3511-01A-01-TS1", "TCGA-AA-3511-11A")
    'sample type 01 ≠ 11'
    >>> slide_sample_mismatch("TCGA-AA-3511-01B-01-TS1", "TCGA-AA-3511-01A-01R-A41B-07")
    'vial B ≠ A'
    >>> slide_sample_mismatch("TCGA-AA-3511-01B-01-TS1", "TCGA-AA-3511-01A", pair_by="sample_type") is None
    True
    """
    if pair_by not in PAIR_LEVELS:
        raise ValueError(f"pair_by={pair_by!r} (--pair-by): use one of {', '.join(PAIR_LEVELS)}")
    a, b = parse_tcga(slide), parse_tcga(sample)
    if a is None or b is None or a.sample_type is None or b.sample_type is None:
        return None
    if a.sample_type != b.sample_type:
        return f"sample type {a.sample_type} ≠ {b.sample_type}"
    level = PAIR_LEVELS.index(pair_by)
    if level >= 1 and a.vial and b.vial and ANY_VIAL not in (a.vial, b.vial) and a.vial != b.vial:
        return f"vial {a.vial} ≠ {b.vial}"
    if (
        level >= 2
        and a.portion
        and b.portion
        and ANY_PORTION not in (a.portion, b.portion)
        and a.portion != b.portion
    ):
        return f"portion {a.portion} ≠ {b.portion}"
    return None


@dataclass(frozen=True)
class Pairing:
    """Which samples each slide pairs with (:func:`pair_slides`).

    Attributes
    ----------
    samples_of
        Slide id → the ids of the samples it pairs with (slides that pair with none are left out).
    unpaired
        Slide id → why it pairs with no sample, in words.
    """

    samples_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unpaired: dict[str, str] = field(default_factory=dict)


def pair_slides(
    slides: Mapping[str, str],
    samples: Mapping[str, str],
    *,
    pair_by: str = "portion",
    slide_types: Iterable[str] | None = None,
) -> Pairing:
    """Pair each slide with the samples of its patient that :func:`slide_sample_mismatch` accepts.

    Parameters
    ----------
    slides, samples
        Id → patient id, for the slides of a store and the samples of a targets set.
    pair_by
        ``"portion"`` (default), ``"vial"`` or ``"sample_type"``: how finely codes must agree.
    slide_types
        Slide type codes to pair (``("DX",)``); slides of other types pair with nothing. None: every slide (a
        slide whose id carries no slide type is never excluded).

    Examples
    --------
    >>> p = pair_slides(
    ...     {"TCGA-AA-3511-01Z-00-DX1": "TCGA-AA-3511", "TCGA-AA-3511-11A-01-TS1": "TCGA-AA-3511"},
    ...     {"TCGA-AA-3511-01A": "TCGA-AA-3511"},
    ... )
    >>> p.samples_of, p.unpaired
    ({'TCGA-AA-3511-01Z-00-DX1': ('TCGA-AA-3511-01A',)}, {'TCGA-AA-3511-11A-01-TS1': 'sample type 11 ≠ 01 (TCGA-AA-3511-01A)'})
    """
    if pair_by not in PAIR_LEVELS:
        raise ValueError(f"pair_by={pair_by!r} (--pair-by): use one of {', '.join(PAIR_LEVELS)}")
    types = None if slide_types is None else set(slide_types)
    by_patient: dict[str, list[str]] = {}
    for sample, patient in samples.items():
        by_patient.setdefault(patient, []).append(sample)
    out = Pairing()
    for slide, patient in slides.items():
        own = by_patient.get(patient, [])
        kind = parse_tcga(slide)
        if types is not None and kind is not None and kind.slide_type and kind.slide_type not in types:
            out.unpaired[slide] = (
                f"slide type {kind.slide_type} not in slide_types ({', '.join(sorted(types))})"
            )
            continue
        if not own:
            out.unpaired[slide] = "its patient has no sample"
            continue
        why = {s: slide_sample_mismatch(slide, s, pair_by=pair_by) for s in own}
        paired = tuple(s for s in own if why[s] is None)
        if paired:
            out.samples_of[slide] = paired
        else:
            out.unpaired[slide] = "; ".join(f"{w} ({s})" for s, w in why.items())
    return out
