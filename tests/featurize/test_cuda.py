"""The CUDA path: the same store as the CPU, within the precision used. Skipped where no CUDA device exists (CI);
run on a GPU machine with ``pytest -m cuda tests/featurize/test_cuda.py``."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from slide2expr.contract import embeddings_path, read_metadata, tiles_path
from slide2expr.featurize import FeaturizeOptions, featurize_cohort
from slide2expr.featurize.encoders import create_encoder
from tests.featurize.conftest import FAST

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
pytestmark = pytest.mark.cuda

TILING = "mpp1.00_px112_ov0"
RUN = {k: v for k, v in FAST.items() if k not in ("encoder", "workers", "batch_size")}


@pytest.fixture(scope="module")
def lite0_cpu():
    torch.manual_seed(0)
    return create_encoder("efficientnet-lite0", pretrained=False, device="cpu")


@pytest.fixture(scope="module")
def cpu_store(tmp_path_factory, slide_dir, lite0_cpu):
    store = tmp_path_factory.mktemp("cpu") / "store"
    s = featurize_cohort(
        slide_dir,
        store=store,
        options=FeaturizeOptions(
            encoder=lite0_cpu, device="cpu", precision="fp32", workers=0, batch_size=8, **RUN
        ),
    )
    assert s.count("ok") == 3
    return store


def embeddings(store, sid: str, encoder: str = "efficientnet-lite0") -> np.ndarray:
    t = pq.read_table(embeddings_path(store, TILING, encoder, sid))
    return np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@needs_cuda
@pytest.mark.parametrize(
    ("precision", "batch", "workers", "floor"),
    [
        ("fp32", 3, 0, 0.999),  # batches smaller than a chunk, read in the main process
        ("fp32", 24, 2, 0.999),  # batches that straddle chunks, tiles through the shared ring
        ("bf16", 64, 2, 0.99),  # bigger than a slide's tail: partial batches, several in flight
        ("bf16", 7, 3, 0.99),
    ],
)
def test_cuda_store_matches_the_cpu_store(
    cpu_store, slide_dir, lite0_cpu, tmp_path, precision, batch, workers, floor
):
    enc = copy.deepcopy(lite0_cpu).to_device("cuda")
    store = tmp_path / "cuda"
    s = featurize_cohort(
        slide_dir,
        store=store,
        options=FeaturizeOptions(
            encoder=enc, device="cuda", precision=precision, workers=workers, batch_size=batch, **RUN
        ),
    )
    assert s.device == "cuda" and s.precision == precision and s.count("ok") == 3
    for sid in ("TCGA-AA-0001-01Z-00-DX1", "s2", "s3"):
        # the tile grid does not depend on the device at all
        assert pq.read_table(tiles_path(store, TILING, sid)).equals(
            pq.read_table(tiles_path(cpu_store, TILING, sid))
        )
        a, b = embeddings(store, sid), embeddings(cpu_store, sid)
        assert a.shape == b.shape and np.isfinite(a).all()
        cos = cosines(a, b)
        assert cos.min() > floor, (sid, float(cos.min()))
        # tiles stay in order: each tile is nearer its own CPU embedding than any other tile's
        nearest = np.argmax(
            (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T,
            axis=1,
        )
        assert (nearest == np.arange(len(a))).mean() > 0.95
        meta = read_metadata(embeddings_path(store, TILING, "efficientnet-lite0", sid))
        assert meta["encoder_spec"]["precision"] == precision


@needs_cuda
def test_cuda_run_isolates_bad_slides(bad_dir, tmp_path, lite0_cpu):
    enc = copy.deepcopy(lite0_cpu).to_device("cuda")
    s = featurize_cohort(
        bad_dir,
        store=tmp_path / "s",
        options=FeaturizeOptions(encoder=enc, device="cuda", workers=2, batch_size=16, **RUN),
    )
    status = {r.slide_id: r.status for r in s.results}
    assert status["good"] == "ok" and status["blank"] == "no_tissue"
    assert {status[k] for k in ("truncated", "random", "empty", "nompp")} == {"failed"}


@needs_cuda
def test_weight_free_encoder_on_cuda_matches_the_cpu(slide_dir, tmp_path):
    runs = {
        dev: featurize_cohort(
            slide_dir,
            store=tmp_path / dev,
            options=FeaturizeOptions(encoder="stain-texture", device=dev, workers=w, batch_size=b, **RUN),
        )
        for dev, w, b in (("cpu", 0, 8), ("cuda", 2, 32))
    }
    assert runs["cpu"].tiles == runs["cuda"].tiles > 0
    for sid in ("TCGA-AA-0001-01Z-00-DX1", "s2", "s3"):
        np.testing.assert_allclose(
            embeddings(tmp_path / "cuda", sid, "stain-texture"),
            embeddings(tmp_path / "cpu", sid, "stain-texture"),
            rtol=1e-3,
            atol=1e-3,
        )


class _FakeEvent:
    """Stands in for torch.cuda.Event on the CPU (work there is done when it returns)."""

    def record(self, stream=None):
        pass

    def synchronize(self):
        pass


class _FakeStream:
    def wait_event(self, event):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real thing runs above")
def test_cuda_batches_keep_order_across_slides_and_reuse_buffers_only_once_collected(monkeypatch):
    """The batching logic of the CUDA path, on the CPU with stand-ins for streams, events and pinned memory:
    batches straddle chunks and slides, at most ``depth`` are in flight, a staging buffer is reused only after its
    batch was collected, every tile lands in its own slide's row, and a slide is handed over (in order) once its
    last batch is collected; a failed slide's rows are dropped."""
    import contextlib

    from slide2expr.featurize._embed import CudaBatches

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self)
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "Stream", lambda dev=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev=None: _FakeStream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())

    calls = []

    def enc(x):  # (B, 3, H, W) uint8 → (B, 2): the tile's first two pixels' red values (its slide and row)
        calls.append(len(x))
        return torch.stack([x[:, 0, 0, 0].float(), x[:, 0, 0, 1].float()], 1)

    b = CudaBatches(enc, torch.device("cpu"), batch_size=5, out_px=4, dim=2, depth=2)
    rng = np.random.default_rng(0)
    handed: list[tuple[int, np.ndarray | None]] = []
    embedded = 0
    slides = [(23, (3, 3, 3, 3, 3, 3, 3, 2)), (4, (4,)), (7, (3, 3)), (10, (5, 5)), (1, (1,))]
    for sid, (n_tiles, chunks) in enumerate(slides):
        b.start(np.full((n_tiles, 2), -1, np.float32))
        # slide 0 comes in blocks (its rows out of order, as reader processes read them), the others in row runs
        order = rng.permutation(n_tiles) if sid == 0 else np.arange(n_tiles)
        row = 0
        for c, k in enumerate(chunks):
            tiles = rng.integers(0, 255, (k, 4, 4, 3)).astype(np.uint8)
            tiles[:, 0, 0, 0] = sid
            tiles[:, 0, 1, 0] = order[row : row + k]
            embedded += b.add(tiles, order[row : row + k])
            row += k
            assert len(b.inflight) <= 2  # ``depth`` batches out while the next one fills
            assert b.slot not in [s for s, *_ in b.inflight]  # the buffer being filled is not in flight
            if sid == 2 and c == 0:
                b.drop()  # slide 2 fails after its first chunk: the rest of it is never added
                break
        else:
            embedded += b.end(lambda emb, sid=sid: handed.append((sid, emb)))
    embedded += b.close()
    assert not b.inflight and b.fill == 0
    assert [sid for sid, _ in handed] == [0, 1, 3, 4]
    for sid, emb in handed:
        np.testing.assert_array_equal(emb[:, 0], sid)
        np.testing.assert_array_equal(emb[:, 1], np.arange(slides[sid][0]))
    # full batches across slide boundaries; the failed slide's staged tiles were embedded and ignored
    assert embedded == sum(calls) == 23 + 4 + 3 + 10 + 1 and calls == [5] * 8 + [1]
