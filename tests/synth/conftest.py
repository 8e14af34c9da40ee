"""A small synthetic cohort, made once per session (treat it as read-only)."""

from __future__ import annotations

import pytest

from slide2expr.synth import CohortInfo, make_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortInfo:
    """6 patients, slides 1.5–2.5 k px, both formats, small texture atlases."""
    return make_cohort(
        tmp_path_factory.mktemp("synth") / "cohort",
        n_patients=6,
        seed=7,
        size=(1500, 2500),
        svs_fraction=0.5,
        two_slide_fraction=0.5,
        atlas_um=128,
    )
