"""Patient and sample ids: TCGA barcodes parsed into their parts."""

from __future__ import annotations

import re

_TCGA = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(-\d{2}[A-Z]?)?", re.IGNORECASE)


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
