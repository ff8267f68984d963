"""Several studies scored at once through one predictor share batches and get the scores the
predictor alone would give them, in order."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from engine.batching import BatchingPredictor
from engine.imageio import read_image
from engine.predictor import load_predictor


@pytest.fixture(scope="module")
def slices(ct_images: list[Path]) -> list[np.ndarray]:
    images = [read_image(p) for p in ct_images]
    return (images * 2)[:15]  # eight real images, some twice: 15 slices


def test_concurrent_studies_share_batches_and_keep_their_scores(tiny_weights: Path, slices: list[np.ndarray]) -> None:
    predictor = load_predictor("ct", "onnxruntime", weights_directory=tiny_weights)
    studies = [slices[0:5], slices[5:12], slices[12:15]]
    expected = [predictor.predict_images(s) for s in studies]
    # a long linger makes the first batch wait until the three studies have all arrived
    shared = BatchingPredictor(predictor, batch_size=8, linger_s=0.5)
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(studies))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = shared.predict_images(studies[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(studies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, want in enumerate(expected):
        np.testing.assert_allclose(results[i], want, rtol=1e-5, atol=1e-6)
    # 15 slices in batches of 8: two batches when shared, four when each study ran alone
    assert shared.stats.slices == 15 and shared.stats.batches == 2 and shared.stats.shared_batches >= 1
    assert shared.stats.mean_batch == 7.5


def test_a_study_larger_than_a_batch_is_split_and_reassembled(tiny_weights: Path, slices: list[np.ndarray]) -> None:
    predictor = load_predictor("ct", "onnxruntime", weights_directory=tiny_weights)
    shared = BatchingPredictor(predictor, batch_size=4, linger_s=0.0)
    rows = predictor.prepare(slices[:11])
    got = shared.submit(rows, shared.new_caller()).result(timeout=60)
    np.testing.assert_allclose(got, predictor.predict(rows), rtol=1e-5, atol=1e-6)
    assert shared.stats.batches == 3 and shared.submit(rows[:0], 1).result().shape == (0,)
    assert shared.model_version == predictor.model_version  # the predictor's attributes pass through


def test_a_failing_batch_fails_its_studies_and_the_next_one_is_served(tiny_weights: Path,
                                                                      slices: list[np.ndarray]) -> None:
    predictor = load_predictor("ct", "onnxruntime", weights_directory=tiny_weights)
    shared = BatchingPredictor(predictor, batch_size=4, linger_s=0.0)
    bad = np.zeros((2, 1, 32, 32), np.float32)  # wrong input size
    with pytest.raises(ValueError, match="shape"):
        shared.submit(bad, 1).result(timeout=60)
    assert shared.predict_images(slices[:3]).shape == (3,)
