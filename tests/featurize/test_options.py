"""``FeaturizeOptions`` checks its fields once, when made; ``plan_cohort`` (the dry run) checks the rest of a run's
arguments as the real run does, and writes nothing."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from typer.testing import CliRunner

from slide2expr.contract import StoreError, Tiling
from slide2expr.featurize import (
    FeaturizeOptions,
    FeaturizeOptionsError,
    SlideListError,
    featurize_cohort,
    plan_cohort,
)
from slide2expr.featurize._tissue import TISSUE_VERSION
from slide2expr.featurize.encoders import UnknownEncoderError, WeightsMismatchError, WeightsNotFoundError
from tests.featurize.conftest import FAST


def test_options_default_to_20x_224_px_tiles_and_name_their_tiling():
    tp = FeaturizeOptions().tiling_params
    assert (tp.tiling, tp.min_tissue, tp.tissue_mpp) == (Tiling(mpp=0.5, tile_px=224), 0.5, 8.0)
    assert FeaturizeOptions(magnification=40).tiling_params.name == "mpp0.25_px224_ov0"
    assert FeaturizeOptions(tiling="mpp1.00_px112_ov8").tiling_params.tiling == Tiling(1.0, 112, 8)
    assert FeaturizeOptions(tiling=Tiling(2.0, 256)).tiling_params.name == "mpp2.00_px256_ov0"
    # what the store records (and hashes) has one type per field, however the numbers were given
    got = FeaturizeOptions(mpp=1, tile_px=112.0, min_tissue=1).tiling_params.as_dict()
    assert got == {
        "mpp": 1.0,
        "tile_px": 112,
        "overlap_px": 0,
        "min_tissue": 1.0,
        "tissue_mpp": 8.0,
        "tissue_version": TISSUE_VERSION,
    }
    assert [type(got[k]) for k in ("mpp", "tile_px", "overlap_px", "min_tissue")] == [float, int, int, float]
    # options are values: replace() makes new, checked options
    o = dataclasses.replace(FeaturizeOptions(mpp=0.5), mpp=1.0)
    assert o.tiling_params.mpp == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.mpp = 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, r"^batch_size=0: give at least 1 tile"),
        ({"workers": -1}, r"^workers=-1: "),
        ({"input_px": 16}, r"^input_px=16: the encoder's input is at least 32 px"),
        ({"dtype": "int8"}, r"^dtype='int8': use float32 or float16$"),
        ({"precision": "fp16"}, r"^precision='fp16': use auto, bf16 or fp32$"),
        ({"compile": "yes"}, r"^compile='yes': use auto, on or off$"),
        ({"device": "gpu"}, r"^device='gpu': use auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, r"^device='cuda:x': "),
        ({"min_tissue": 1.5}, r"^min_tissue=1.5: a fraction in \[0, 1\]"),
        ({"tissue_mpp": 0}, r"^tissue_mpp=0: "),
        ({"mpp": 0}, r"^mpp=0: give the tile resolution in µm/px"),
        ({"mpp": 500.0}, r"^mpp=500.0: "),
        ({"magnification": 0}, r"^magnification=0: must be positive"),
        ({"magnification": 0.05}, r"^magnification=0.05 \(200 µm/px\): "),
        ({"mpp": 1.0, "magnification": 10}, r"^give either mpp or magnification, not both$"),
        ({"tile_px": 0}, r"^tile_px=0, overlap_px=0: need tile_px > 0"),
        ({"tile_px": 64, "overlap_px": 64}, r"^tile_px=64, overlap_px=64: "),
        ({"tiling": "mpp1.00_px112_ov0", "tile_px": 224}, r"^give either tiling or tile_px, not both$"),
        ({"tiling": "tiles-of-112"}, r"^tiling='tiles-of-112': "),
        ({"mpp_override": 50}, r"^mpp_override=50: a level-0 resolution is 0.05–20.0 µm/px"),
        ({"shard": "3/2"}, r"^shard='3/2': need 0 <= i < n$"),
        ({"shard": "half"}, r"^shard='half': expected 'i/n'"),
    ],
)
def test_options_refuse_what_no_run_can_use_naming_the_field(kwargs, match):
    with pytest.raises(FeaturizeOptionsError, match=match):
        FeaturizeOptions(**kwargs)


def _files(root) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_dry_run_plans_what_the_run_does_and_writes_nothing(slide_dir, tmp_path):
    from slide2expr.cli import app

    store = tmp_path / "store"
    options = FeaturizeOptions(**FAST)
    plan = plan_cohort(slide_dir, store=store, options=options)
    assert not store.exists()
    assert [p.slide.slide_id for p in plan.slides] == ["TCGA-AA-0001-01Z-00-DX1", "s2", "s3"]
    assert plan.n_existing == 0 and not plan.force
    assert (plan.encoder, plan.tiling.name, plan.batch_size, plan.workers) == (
        "stain-texture",
        "mpp1.00_px112_ov0",
        8,
        0,
    )
    assert plan.device == ("cuda" if torch.cuda.is_available() else "cpu")
    featurize_cohort(slide_dir, store=store, options=options)
    assert [p.embeddings for p in plan.slides] == sorted(store.glob("embeddings/*/*/*.parquet"))
    # a temporary a killed run left, and a new patient table (the real run would clean the one and rewrite slides/
    # rows for the other): a dry run leaves everything as it is
    (store / "slides" / ".s2.parquet.0badc0de.tmp").write_bytes(b"PAR1 half")
    csv = tmp_path / "patients.csv"
    csv.write_text("slide_id,patient_id\ns2,PX\n")
    before = _files(store)
    again = plan_cohort(slide_dir, store=store, options=FeaturizeOptions(patients=csv, **FAST))
    assert again.n_existing == 3 and [p.slide.patient_id for p in again.slides][1] == "PX"
    args = [str(slide_dir), "--store", str(store), "--mpp", "1", "--tile-px", "112", "--patients", str(csv)]
    args += ["--encoder", "stain-texture"]
    res = CliRunner().invoke(app, ["featurize", *args, "--dry-run"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "3 slides" in res.output and "exists (skipped if it matches)" in res.output
    assert _files(store) == before
    forced = plan_cohort(slide_dir, store=store, options=FeaturizeOptions(shard="1/2", force=True, **FAST))
    assert [p.slide.slide_id for p in forced.slides] == ["s2"] and forced.force
    res = CliRunner().invoke(app, ["featurize", *args, "--force", "--dry-run"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "to do" in res.output and "exists" not in res.output


def test_the_plan_refuses_what_the_run_would_refuse(slide_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(tmp_path / "weights"))
    slide = slide_dir / "s2.svs"
    st = "stain-texture"
    with pytest.raises(UnknownEncoderError, match="unknown encoder 'nosuch'"):
        plan_cohort(slide, store=tmp_path / "a", options=FeaturizeOptions(encoder="nosuch"))
    with pytest.raises(WeightsNotFoundError, match="no weights for encoder 'uni' here"):
        plan_cohort(slide, store=tmp_path / "a", options=FeaturizeOptions(encoder="uni"))
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        plan_cohort(
            slide, store=tmp_path / "a", options=FeaturizeOptions(encoder="uni", weights=tmp_path / "x.bin")
        )
    (tmp_path / "uni.txt").write_text("not weights")
    with pytest.raises(WeightsMismatchError, match="unsupported suffix '.txt'"):
        plan_cohort(
            slide, store=tmp_path / "a", options=FeaturizeOptions(encoder="uni", weights=tmp_path / "uni.txt")
        )
    with pytest.raises(FeaturizeOptionsError, match="weight-free"):
        plan_cohort(
            slide, store=tmp_path / "a", options=FeaturizeOptions(encoder=st, weights=tmp_path / "x.bin")
        )
    with pytest.raises(SlideListError, match="no slides found"):
        plan_cohort(tmp_path, store=tmp_path / "a", options=FeaturizeOptions(encoder=st))
    with pytest.raises(
        SlideListError,
        match=r"^1 slide file does not exist: .*s9.svs \(did you mean s3.svs or s2.svs\?\); fix its",
    ):
        plan_cohort(slide_dir / "s9.svs", store=tmp_path / "a", options=FeaturizeOptions(encoder=st))
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        plan_cohort(slide, store=tmp_path / "file")
    with pytest.raises(StoreError, match="file is a file, so no folder can be made under it"):
        plan_cohort(slide, store=tmp_path / "file" / "store", options=FeaturizeOptions(encoder=st))
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "store.json").write_text('{"format": 999}')
    with pytest.raises(StoreError, match="store format 999"):
        plan_cohort(slide, store=newer)
    if not torch.cuda.is_available():
        with pytest.raises(FeaturizeOptionsError, match="device='cuda': no CUDA device"):
            plan_cohort(slide, store=tmp_path / "a", options=FeaturizeOptions(encoder=st, device="cuda"))
    assert not (tmp_path / "a").exists()


def test_a_run_without_an_encoder_is_refused_with_the_choices_and_their_weights_here(
    slide_dir, tmp_path, monkeypatch
):
    """No default encoder: the weight-free one is never used unasked, and the message says what can be used here."""
    from slide2expr.cli import app
    from slide2expr.featurize.encoders import list_encoders, weights_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SLIDE2EXPR_WEIGHTS", str(tmp_path / "weights"))
    assert FeaturizeOptions().encoder is None
    with pytest.raises(FeaturizeOptionsError) as err:
        plan_cohort(slide_dir / "s2.svs", store=tmp_path / "a", options=FeaturizeOptions())
    msg = str(err.value)
    assert msg.startswith(
        "encoder not given: choose one with --encoder NAME (Python: FeaturizeOptions(encoder=NAME))"
    )
    head, _, rest = msg.partition("; weight-free: ")
    free, _, missing = rest.partition("; weights not found here: ")
    here = [n.split(" (")[0] for n in head.partition("weights here: ")[2].split(", ")]
    missing = missing.removesuffix(" (`slide2expr encoders` says where each file goes)").split(", ")
    assert free.startswith("stain-texture (102-d")
    for spec in list_encoders():
        if spec.needs_weights:  # each named once, under whether its weights are found here
            assert (spec.name in here) == (weights_available(spec) is not None) != (spec.name in missing)
    res = CliRunner().invoke(
        app, ["featurize", str(slide_dir), "--store", str(tmp_path / "a"), "--no-progress"]
    )
    assert res.exit_code == 2 and "encoder not given" in res.output and "Traceback" not in res.output
    with pytest.raises(FeaturizeOptionsError, match="encoder not given"):
        featurize_cohort(slide_dir, store=tmp_path / "a")
    assert not (tmp_path / "a").exists()
    help_text = " ".join(
        CliRunner().invoke(app, ["featurize", "--help"], env={"COLUMNS": "200"}).output.split()
    )
    assert "required, no default" in help_text and "weights here" in help_text


def test_a_non_square_encoder_input_needs_input_px_before_anything_runs(slide_dir, tmp_path):
    from slide2expr.featurize.encoders import EncoderSpec, register_encoder, unregister_encoder

    spec = EncoderSpec(
        name="test-rect-input",
        architecture="resnet10t",
        dim=512,
        output_mode="pooled",
        timm_kwargs={"num_classes": 0},
        pretrained_cfg={"input_size": (3, 64, 96), "mean": (0.5,) * 3, "std": (0.25,) * 3},
        family="cnn",
    )
    register_encoder(spec)
    try:
        with pytest.raises(FeaturizeOptionsError, match="expects non-square 64x96 inputs; give input_px"):
            plan_cohort(
                slide_dir / "s2.svs", store=tmp_path / "a", options=FeaturizeOptions(encoder=spec.name)
            )
        options = FeaturizeOptions(encoder=spec.name, input_px=64)
        assert plan_cohort(slide_dir / "s2.svs", store=tmp_path / "a", options=options).encoder == spec.name
    finally:
        unregister_encoder(spec.name)
    assert not (tmp_path / "a").exists()
