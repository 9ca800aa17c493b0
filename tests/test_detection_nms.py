"""NMS, per-class NMS and Soft-NMS (nas_cli.detection.nms) against torchvision and the paper's algorithm."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops

from nas_cli.detection import nms as nms_module
from nas_cli.detection.nms import batched_nms, nms, nms_torch, soft_nms, soft_nms_batch
from nas_cli.errors import UserError


def clustered_boxes(n: int, seed: int, dtype=torch.float32, integer: bool = False, tied: bool = False):
    """Boxes around a few objects (like a detector's raw output) with random scores; ``tied``: 4 score levels."""
    g = torch.Generator().manual_seed(seed)
    objects = max(1, n // 20)
    centre = torch.rand(objects, 2, generator=g) * 200
    size = torch.rand(objects, 2, generator=g) * 40 + 5
    pick = torch.randint(0, objects, (n,), generator=g)
    c = centre[pick] + torch.randn(n, 2, generator=g) * 0.15 * size[pick]
    wh = size[pick] * (0.7 + 0.6 * torch.rand(n, 2, generator=g))
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    if integer:  # equal IoUs between many pairs, and offsets that stay exact
        boxes = boxes.round()
        boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.rand(n, generator=g)
    if tied:
        scores = (scores * 4).floor() / 4
    return boxes.to(dtype), scores.to(dtype), torch.randint(0, 3, (n,), generator=g)


CASES = [(n, seed, thr) for n, seed in [(40, 0), (300, 1), (1500, 2)] for thr in (0.0, 0.3, 0.5, 0.7, 1.0)]


@pytest.mark.parametrize("n, seed, thr", CASES)
@pytest.mark.parametrize("tied", [False, True])
def test_nms_keeps_what_torchvision_keeps(n, seed, thr, tied):
    boxes, scores, _ = clustered_boxes(n, seed, integer=tied, tied=tied)
    expected = tvops.nms(boxes, scores, thr)
    assert torch.equal(nms(boxes, scores, thr), expected)
    assert torch.equal(nms_torch(boxes, scores, thr), expected)
    # small blocks: many blocks, compaction between them, and suppression chains inside a block
    assert torch.equal(nms_torch(boxes, scores, thr, block=7), expected)
    assert torch.equal(nms_torch(boxes.double(), scores.double(), thr), tvops.nms(boxes.double(), scores.double(), thr))


@pytest.mark.parametrize("n, seed, thr", CASES)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kernel", [True, False])
def test_batched_nms_keeps_what_torchvision_keeps(n, seed, thr, tied, kernel, monkeypatch):
    # n = 1500 is past torchvision's CPU cutoff (4000 numbers), so both of its strategies are covered
    boxes, scores, classes = clustered_boxes(n, seed, integer=tied, tied=tied)
    if not kernel:  # as on a device without torchvision's kernel: nms_torch compares classes itself
        monkeypatch.setattr(nms_module, "_has_kernel", lambda _: False)
    assert torch.equal(batched_nms(boxes, scores, classes, thr), tvops.batched_nms(boxes, scores, classes, thr))


def test_many_equal_scores_keep_torchvisions_order():
    # every score equal: the order is the kernel's tie order (index order), not Python's unstable sort's
    boxes, _, _ = clustered_boxes(2000, 5, integer=True)
    scores = torch.full((2000,), 0.5)
    expected = tvops.nms(boxes, scores, 0.4)
    assert torch.equal(nms_torch(boxes, scores, 0.4), expected)
    assert torch.equal(expected, expected.sort()[0])


def test_a_chain_of_overlaps_alternates():
    # boxes shifted by 2 px along x, scores falling: each overlaps the next (IoU 8/12 = 2/3) but not the one after
    # (6/14 < 0.5), so greedy NMS at 0.5 keeps every other box: 0, 2, 4, ...; the whole chain sits in one block
    x = torch.arange(50, dtype=torch.float32) * 2
    boxes = torch.stack([x, torch.zeros(50), x + 10, torch.ones(50) * 10], dim=1)
    scores = torch.linspace(1, 0.1, 50)
    assert torch.equal(nms_torch(boxes, scores, 0.5), torch.arange(0, 50, 2))
    assert torch.equal(nms_torch(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))


def test_an_iou_equal_to_the_rounded_threshold_is_suppressed_as_torchvision_does():
    # IoU = 30 / 100 in float32 is float32(0.3) = 0.30000001..., above the double 0.3 that torchvision's CPU kernel
    # compares with: it suppresses the second box, where a plain float32 "iou > 0.3" in torch would not
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 3.0]])
    scores = torch.tensor([0.9, 0.8])
    assert tvops.nms(boxes, scores, 0.3).tolist() == [0]
    assert nms_torch(boxes, scores, 0.3).tolist() == [0]


def test_large_input_matches_without_an_n_by_n_matrix():
    boxes, scores, _ = clustered_boxes(20_000, 7)
    assert torch.equal(nms_torch(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("fn", ["nms", "nms_torch", "batched_nms"])
def test_empty_and_single_box(fn):
    def call(boxes, scores):
        if fn == "batched_nms":
            return batched_nms(boxes, scores, torch.zeros(len(scores), dtype=torch.int64), 0.5)
        return getattr(nms_module, fn)(boxes, scores, 0.5)

    empty = call(torch.zeros(0, 4), torch.zeros(0))
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert call(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.3])).tolist() == [0]


def test_bad_nms_arguments():
    boxes, scores, _ = clustered_boxes(10, 0)
    with pytest.raises(UserError, match="iou_threshold"):
        nms(boxes, scores, 1.5)
    with pytest.raises(ValueError, match="scores"):
        nms_torch(boxes, scores[:5], 0.5)


# ---------------------------------------------------------------- Soft-NMS


def reference_soft_nms(boxes, scores, method, nt, sigma, threshold, classes=None):
    """Bodla et al. 2017, Algorithm 1, written out over Python lists: take the best remaining box (lowest index on a
    tie), keep it, rescore the rest by f(IoU) (same class only), drop those below ``threshold``."""
    b, s = boxes.tolist(), scores.tolist()

    def iou(i, j):
        w = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
        h = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
        inter = w * h
        union = (b[i][2] - b[i][0]) * (b[i][3] - b[i][1]) + (b[j][2] - b[j][0]) * (b[j][3] - b[j][1]) - inter
        return inter / union if union > 0 else 0.0

    remaining = [i for i in range(len(s)) if s[i] >= threshold]
    kept = []
    while remaining:
        m = max(remaining, key=lambda i: (s[i], -i))
        kept.append((m, s[m]))
        remaining.remove(m)
        for i in remaining:
            if classes is not None and classes[i] != classes[m]:
                continue
            ov = iou(m, i)
            s[i] *= (1 - ov if ov >= nt else 1.0) if method == "linear" else math.exp(-ov * ov / sigma)
        remaining = [i for i in remaining if s[i] >= threshold]
    return kept


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("per_class", [False, True])
@pytest.mark.parametrize("score_threshold", [0.001, 0.05])
def test_soft_nms_follows_the_papers_algorithm(method, per_class, score_threshold, monkeypatch):
    monkeypatch.setattr(nms_module, "SOFT_NMS_CHECK_EVERY", 8)  # several rounds of its loop, compaction between
    boxes, scores, classes = clustered_boxes(90, 11, dtype=torch.float64)
    classes = classes if per_class else None
    keep, kept_scores = soft_nms(
        boxes, scores, iou_threshold=0.3, sigma=0.5, method=method, score_threshold=score_threshold, idxs=classes
    )
    expected = reference_soft_nms(
        boxes, scores, method, 0.3, 0.5, score_threshold, None if classes is None else classes.tolist()
    )
    assert keep.tolist() == [i for i, _ in expected]
    assert kept_scores.tolist() == pytest.approx([v for _, v in expected], rel=1e-12, abs=1e-15)
    assert keep.dtype == torch.int64 and kept_scores.dtype == torch.float64
    assert len(expected) > 2 * 8


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_batch_keeps_what_the_papers_algorithm_keeps_in_each_set(method, monkeypatch):
    """Five sets of boxes padded to one [B, K] batch (padding rows carry high scores, to prove they are ignored):
    each set's kept boxes and scores are the reference loop's on that set alone."""
    monkeypatch.setattr(nms_module, "SOFT_NMS_CHECK_EVERY", 4)
    sets = [clustered_boxes(n, seed, dtype=torch.float64) for n, seed in [(60, 1), (35, 2), (1, 3), (48, 4), (0, 5)]]
    k = 60
    boxes = torch.zeros(len(sets), k, 4, dtype=torch.float64)
    scores = torch.full((len(sets), k), 0.99, dtype=torch.float64)
    classes = torch.zeros(len(sets), k, dtype=torch.int64)
    valid = torch.zeros(len(sets), k, dtype=torch.bool)
    for i, (b, sc, c) in enumerate(sets):
        boxes[i, : len(b)], scores[i, : len(b)], classes[i, : len(b)], valid[i, : len(b)] = b, sc, c, True
    kept, decayed = soft_nms_batch(
        boxes, scores, iou_threshold=0.3, sigma=0.5, method=method, score_threshold=0.01, idxs=classes, valid=valid
    )
    for i, (b, sc, c) in enumerate(sets):
        expected = dict(reference_soft_nms(b, sc, method, 0.3, 0.5, 0.01, c.tolist()))
        assert torch.where(kept[i])[0].tolist() == sorted(expected)
        assert decayed[i][kept[i]].tolist() == pytest.approx([expected[j] for j in sorted(expected)], rel=1e-12)


def test_soft_nms_hand_example():
    # A = [0,0,10,10] 0.9, B = [1,0,11,10] 0.8, C = [5,0,15,10] 0.7; linear, N_t = 0.3.
    # Keep A. IoU(A,B) = 90/110 = 9/11 -> B: 0.8 * 2/11 = 0.14545; IoU(A,C) = 50/150 = 1/3 -> C: 0.7 * 2/3 = 0.46667.
    # Keep C. IoU(C,B) = 60/140 = 3/7 -> B: 0.8 * 2/11 * 4/7 = 0.08312. Keep B.
    # (Plain NMS at 0.3 keeps A alone: both IoUs exceed 0.3.)
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [5, 0, 15, 10]], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64)
    keep, kept = soft_nms(boxes, scores, iou_threshold=0.3, method="linear")
    assert keep.tolist() == [0, 2, 1]
    assert kept.tolist() == pytest.approx([0.9, 0.7 * 2 / 3, 0.8 * 2 / 11 * 4 / 7], rel=1e-12)
    assert nms(boxes, scores, 0.3).tolist() == [0]
    # a score threshold of 0.1 drops B once its score falls to 0.083
    assert soft_nms(boxes, scores, iou_threshold=0.3, score_threshold=0.1)[0].tolist() == [0, 2]
    # other classes never decay each other: with B alone in its class it keeps 0.8 and goes second
    keep, kept = soft_nms(boxes, scores, iou_threshold=0.3, idxs=torch.tensor([0, 1, 0]))
    assert keep.tolist() == [0, 1, 2] and kept.tolist() == pytest.approx([0.9, 0.8, 0.7 * 2 / 3], rel=1e-12)


def test_soft_nms_empty_input_and_bad_arguments():
    keep, kept = soft_nms(torch.zeros(0, 4), torch.zeros(0))
    assert keep.dtype == torch.int64 and keep.shape == (0,) and kept.dtype == torch.float32 and kept.shape == (0,)
    keep, kept = soft_nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.0001]))  # below the score threshold
    assert keep.shape == (0,) and kept.shape == (0,)
    boxes, scores = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.5])
    for kwargs, word in [
        ({"method": "hard"}, "method"),
        ({"sigma": 0.0}, "sigma"),
        ({"iou_threshold": -0.1}, "iou_threshold"),
        ({"score_threshold": 2.0}, "score_threshold"),
    ]:
        with pytest.raises(UserError, match=word):
            soft_nms(boxes, scores, **kwargs)


@pytest.mark.slow
def test_100k_boxes_match_torchvision():
    # ~4 s, most of it torchvision's own kernel; nms_torch holds at most NMS_BLOCK^2 + TILE IoUs at a time
    boxes, scores, _ = clustered_boxes(100_000, 8)
    assert torch.equal(nms_torch(boxes, scores, 0.5), tvops.nms(boxes, scores, 0.5))
