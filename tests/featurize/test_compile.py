"""Compiled encoders (``torch.compile``): same outputs as eager at every batch shape, one compile per encoder and
batch size, a clear error or an eager fallback where compiling fails, and featurize's ``compile=`` choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from slide2expr.cli import app
from slide2expr.featurize import FeaturizeOptions, FeaturizeOptionsError, featurize_cohort
from slide2expr.featurize._compile import (
    COMPILE_MIN_EAGER_SECONDS,
    COMPILE_PROBE_BATCHES,
    AutoCompile,
    wants_compile,
)
from slide2expr.featurize.encoders import CompiledEncoder, CompileError, Encoder, EncoderSpec, build_backbone
from slide2expr.featurize.encoders._model import Encoder as _Encoder

from .conftest import FAST

#: a small CNN (timm's resnet10t, random weights): compiles in seconds
TINY_CNN = EncoderSpec(
    name="test-cnn-tiny",
    architecture="resnet10t",
    dim=512,
    output_mode="pooled",
    timm_kwargs={"num_classes": 0},
    pretrained_cfg={"input_size": (3, 112, 112), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
    family="cnn",
)


def _tiny_cnn() -> Encoder:
    """The tiny CNN with the same random weights every time."""
    import timm

    torch.manual_seed(0)
    backbone = build_backbone(TINY_CNN)
    cfg = timm.data.resolve_model_data_config(backbone)
    return _Encoder(TINY_CNN, backbone, data_config=cfg).to_device("cpu")


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    """One encoder for the module, so that its compiled form (kept on it) is compiled once."""
    return _tiny_cnn()


def _tiles(n: int, seed: int = 0, *, nhwc: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if nhwc:  # how the pipeline hands tiles over: NHWC memory viewed as NCHW (channels_last strides)
        return torch.randint(0, 256, (n, 112, 112, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    return torch.randint(0, 256, (n, 3, 112, 112), dtype=torch.uint8, generator=g)


def test_wants_compile_only_where_it_was_measured() -> None:
    cnn = {"device_type": "cpu", "precision": "fp32", "family": "cnn"}
    assert wants_compile("auto", **cnn)
    assert not wants_compile("auto", **{**cnn, "precision": "bf16"})
    assert not wants_compile("auto", **{**cnn, "family": "vit"})
    assert not wants_compile("auto", **{**cnn, "family": "handcrafted"})
    assert not wants_compile("auto", **{**cnn, "device_type": "cuda"})
    assert not wants_compile("off", **cnn)
    assert wants_compile("on", **{**cnn, "family": "vit", "precision": "bf16"})
    assert not wants_compile("on", **{**cnn, "device_type": "cuda"})


class _Clock:
    """A stand-in for ``time.perf_counter`` that the fake encoder advances."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _FakeEncoder:
    """Eager: ``seconds_per_tile`` per tile on the fake clock (the first call 10× slower, as a real first call
    is); ``compiled()`` hands out a stand-in that marks its outputs with 1.0 and counts its calls, and
    ``compiled_ready()`` gives the ones that ran."""

    def __init__(self, clock: _Clock, seconds_per_tile: float) -> None:
        self.clock, self.spt, self.calls = clock, seconds_per_tile, 0
        self.made: list = []

    def compiled_ready(self, batch_size: int, *, fallback: bool = False):
        ran = [c for b, _, c in self.made if b == batch_size and c.ready]  # either fallback, as Encoder's
        return ran[0] if ran else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.clock.t += self.spt * len(x) * (10 if self.calls == 1 else 1)
        return torch.zeros(len(x), 2)

    def compiled(self, batch_size: int, *, fallback: bool = False):
        enc = self

        class Compiled:
            active, seconds_compile, calls = True, None, 0

            @property
            def ready(self) -> bool:
                return self.seconds_compile is not None

            def __call__(self, x: torch.Tensor) -> torch.Tensor:
                self.calls += 1
                self.seconds_compile = self.seconds_compile or 12.0
                return torch.ones(len(x), 2)

        c = Compiled()
        enc.made.append((batch_size, fallback, c))
        return c


@pytest.mark.parametrize(("tiles", "compiles"), [(10_000, True), (1_000, False)])
def test_auto_compiles_when_the_timed_eager_work_left_pays_for_it(
    monkeypatch: pytest.MonkeyPatch, tiles: int, compiles: bool
) -> None:
    import slide2expr.featurize._compile as run

    clock = _Clock()
    monkeypatch.setattr(run.time, "perf_counter", clock)
    enc = _FakeEncoder(clock, seconds_per_tile=0.02)  # 50 tiles/s eager: 10,000 tiles ≈ 200 s, 1,000 ≈ 20 s
    auto = AutoCompile(enc, 8, tiles)
    x = torch.zeros(8, 3, 4, 4)
    outs = [float(auto(x)[0, 0]) for _ in range(COMPILE_PROBE_BATCHES + 3)]
    # the probe runs eagerly; the first call is not timed (it would make 0.02 s per tile look like 0.04)
    assert outs[: COMPILE_PROBE_BATCHES + 1] == [0.0] * (COMPILE_PROBE_BATCHES + 1)
    assert auto.decided and enc.calls == COMPILE_PROBE_BATCHES + 1 + (0 if compiles else 2)
    left = tiles - 8 * (COMPILE_PROBE_BATCHES + 1)
    assert auto.eager_seconds_left == pytest.approx(left * 0.02)
    assert (auto.eager_seconds_left >= COMPILE_MIN_EAGER_SECONDS) is compiles
    if compiles:
        assert outs[-2:] == [1.0, 1.0] and auto.compiles_here
        ((bs, fallback, c),) = enc.made
        assert bs == 8 and fallback and c.calls == 2  # auto never fails a run over compiling
        assert auto.in_use is c
        # a later run in the process finds it compiled: no probe, no second compile
        again = AutoCompile(enc, 8, 16)
        assert again.decided and float(again(x)[0, 0]) == 1.0 and len(enc.made) == 1
        assert again.in_use is c and not again.compiles_here
    else:
        assert outs[-2:] == [0.0, 0.0] and not enc.made and auto.in_use is None


@pytest.mark.perf
def test_compiled_equals_eager_at_every_batch_shape(tiny: Encoder) -> None:
    comp = tiny.compiled(8)
    assert not comp.ready and tiny.compiled_ready(8) is None  # built, not compiled before its first call
    assert tiny.compiled(8) is comp  # kept on the encoder: a second run does not compile again
    with torch.inference_mode():
        for n, nhwc in ((8, True), (3, True), (19, True), (5, False), (1, True)):
            x = _tiles(n, seed=n, nhwc=nhwc)
            eager, got = tiny(x), comp(x)
            assert got.shape == (n, 512) and got.dtype == torch.float32
            cos = torch.nn.functional.cosine_similarity(got, eager)
            assert float(cos.min()) > 0.99999, (n, nhwc, float(cos.min()))
            torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-4)
    assert comp.active and comp.ready and comp.error is None and tiny.compiled_ready(8) is comp
    # compiled once, it serves a run that would fall back as well (no second compile); other batch sizes are not
    assert tiny.compiled_ready(8, fallback=True) is comp and tiny.compiled_ready(4) is None
    assert comp.seconds_compile is not None and comp.seconds_compile > 0
    # a padded batch's outputs do not depend on the padding: the same tiles alone and inside a full batch agree
    x = _tiles(8, seed=42)
    with torch.inference_mode():
        torch.testing.assert_close(comp(x[:3]), comp(x)[:3], rtol=1e-5, atol=1e-5)


def test_batch_size_must_be_positive(tiny: Encoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CompiledEncoder(tiny, 0)


def _broken_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.compile`` whose compiled function fails at its first call, as with no C++ compiler."""

    def fake_compile(model, **kwargs):
        def fails(x):
            raise RuntimeError(
                "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx"
            )

        return fails

    monkeypatch.setattr(torch, "compile", fake_compile)


def test_a_failed_compile_is_a_clear_error_or_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    _broken_compile(monkeypatch)
    enc = _tiny_cnn()
    x = _tiles(4)
    match = r"test-cnn-tiny.*No working C\+\+ compiler.*--compile off"
    with pytest.raises(CompileError, match=match), torch.inference_mode():
        CompiledEncoder(enc, 8)(x)
    lenient = CompiledEncoder(enc, 8, fallback=True)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="running it eagerly"):
        out = lenient(x)
    with torch.inference_mode():
        torch.testing.assert_close(out, enc(x))
        torch.testing.assert_close(lenient(x), enc(x))  # eager from now on, without another warning
    assert not lenient.active and not lenient.ready and "C++ compiler" in lenient.error


def _embeddings(store: Path) -> tuple[np.ndarray, dict]:
    (path,) = store.glob("embeddings/**/*.parquet")
    meta = json.loads(pq.read_schema(path).metadata[b"slide2expr.encoder_spec"])
    return np.stack(pq.read_table(path).column("embedding").to_numpy(zero_copy_only=False)), meta


@pytest.mark.perf
def test_featurize_compiled_matches_eager_and_records_it(
    tiny: Encoder, slide_dir: Path, tmp_path: Path
) -> None:
    slide = slide_dir / "s2.svs"
    # fp32 throughout: on a CPU with bf16, precision auto would run in bf16, which auto does not compile
    kw = {**FAST, "encoder": tiny, "precision": "fp32", "batch_size": 6}
    eager = featurize_cohort([slide], store=tmp_path / "eager", options=FeaturizeOptions(compile="off", **kw))
    on = featurize_cohort([slide], store=tmp_path / "on", options=FeaturizeOptions(compile="on", **kw))
    assert not eager.compiled and on.compiled
    assert on.tiles == eager.tiles > 6 and on.tiles % 6 != 0  # a padded last batch
    a, meta_a = _embeddings(tmp_path / "eager")
    b, meta_b = _embeddings(tmp_path / "on")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999
    assert meta_a["compiled"] is False and meta_b["compiled"] is True
    # a second run in the process reuses the compiled encoder: no compile time, whether "on" or "auto" asks for it
    again = featurize_cohort([slide], store=tmp_path / "again", options=FeaturizeOptions(compile="on", **kw))
    assert again.compiled and again.seconds_compile == 0.0
    reuse = featurize_cohort(
        [slide], store=tmp_path / "reuse", options=FeaturizeOptions(compile="auto", **kw)
    )
    assert reuse.compiled and reuse.seconds_compile == 0.0
    # auto leaves a run this small (well under a second of eager work) eager with an encoder not yet compiled
    auto = featurize_cohort(
        [slide],
        store=tmp_path / "auto",
        options=FeaturizeOptions(compile="auto", **{**kw, "encoder": _tiny_cnn()}),
    )
    assert not auto.compiled and auto.seconds < COMPILE_MIN_EAGER_SECONDS


@pytest.mark.perf
def test_featurize_auto_compiles_large_runs_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, slide_dir: Path, tmp_path: Path
) -> None:
    import slide2expr.featurize._compile as run

    monkeypatch.setattr(run, "COMPILE_MIN_EAGER_SECONDS", 0.0)  # every run counts as large
    monkeypatch.setattr(run, "COMPILE_PROBE_BATCHES", 1)  # decide at the second batch
    slide = slide_dir / "s2.svs"
    # 4+ batches: two probed eagerly, the rest compiled; fp32, which auto compiles, on a CPU with bf16 too
    kw = {**FAST, "batch_size": 4, "precision": "fp32"}
    ok = featurize_cohort(
        [slide],
        store=tmp_path / "ok",
        options=FeaturizeOptions(compile="auto", **{**kw, "encoder": _tiny_cnn()}),
    )
    assert ok.compiled and ok.seconds_compile > 0 and ok.tiles > 12
    # weight-free encoder: auto never compiles it (compiling costs more than it saves)
    st = featurize_cohort([slide], store=tmp_path / "st", options=FeaturizeOptions(compile="auto", **kw))
    assert not st.compiled
    _broken_compile(monkeypatch)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        fb = featurize_cohort(
            [slide],
            store=tmp_path / "fb",
            options=FeaturizeOptions(compile="auto", **{**kw, "encoder": _tiny_cnn()}),
        )
    assert not fb.compiled and fb.count("ok") == 1 and fb.tiles == ok.tiles
    np.testing.assert_allclose(*(_embeddings(tmp_path / s)[0] for s in ("ok", "fb")), rtol=1e-3, atol=1e-4)


def test_compile_arguments(slide_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FeaturizeOptionsError, match="compile='yes'"):
        featurize_cohort(
            [slide_dir / "s2.svs"], store=tmp_path / "s", options=FeaturizeOptions(compile="yes", **FAST)
        )
    res = CliRunner().invoke(
        app, ["featurize", str(slide_dir / "s2.svs"), "--store", str(tmp_path / "s"), "--compile", "yes"]
    )
    assert res.exit_code == 2 and "compile='yes': use auto, on or off" in res.output
    # --compile on where compiling fails: exit 2 with the reason, and no embeddings written
    _broken_compile(monkeypatch)
    monkeypatch.setattr("slide2expr.featurize.encoders.create_encoder", lambda *a, **k: _tiny_cnn())
    res = CliRunner().invoke(
        app,
        ["featurize", str(slide_dir / "s2.svs"), "--store", str(tmp_path / "c"), "--compile", "on", "--mpp", "1",
         "--tile-px", "112", "--workers", "0", "--no-progress", "--encoder", "stain-texture"],
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "could not compile encoder 'test-cnn-tiny'" in res.output and "--compile off" in res.output
    assert not list((tmp_path / "c").glob("embeddings/**/*.parquet"))
