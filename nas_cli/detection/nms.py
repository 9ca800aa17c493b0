"""Non-maximum suppression: greedy NMS, per-class NMS and Soft-NMS, as batched torch functions.

Boxes are float ``[N, 4]`` xyxy, scores ``[N]``; every function returns int64 indices into the input, best first.

``nms`` and ``batched_nms`` keep exactly what ``torchvision.ops.nms`` / ``batched_nms`` keep, in the same order.
Where torchvision's compiled kernel exists for the tensors' device (CPU, CUDA) they call it; elsewhere, or without
torchvision, they run ``nms_torch``, a pure-torch version with the same result. Two details of torchvision's CPU
kernel decide "the same result":

- Order: its kernel sorts with ``scores.sort(0, /*descending=*/true)`` and returns equal scores in index order
  (measured with torch 2.14 / torchvision 0.29 on CPU, float32 and float64, 10 to 200k boxes), while the same
  unstable call made from Python does not (ties come out shuffled from ~100 boxes on). So ``nms_torch`` sorts with
  ``stable=True``: ties go lowest index first, as in the kernel. (torchvision warns that its CUDA kernel may order
  ties differently; ``nms`` uses that kernel on CUDA, so it agrees with torchvision there too.)
- Test: box j is suppressed by a kept box i when ``IoU > iou_threshold`` (strictly), with the IoU computed in the
  boxes' dtype as ``inter / (area_i + area_j - inter)`` (no eps) and compared with the threshold as a double.
  ``nms_torch`` computes the same expression in the same order and compares with the largest value of the dtype
  that is <= the threshold, which decides every float exactly as the double comparison does. (torchvision's CUDA
  kernel compares against ``float(threshold)`` instead; the two differ only for an IoU that is exactly that float.)

``soft_nms`` is Soft-NMS (Bodla et al., ICCV 2017); see its docstring.
"""

from __future__ import annotations

import math

import torch

from nas_cli.errors import UserError

NMS_BLOCK = (
    512  # boxes nms_torch resolves together: 256-1024 all do well on CPU (bench/detect.py); 512 was best at 100k
)
TILE = 1 << 20  # most IoUs nms_torch computes in one tensor (4 MiB a float32 temporary), so memory stays O(N)
SOFT_NMS_CHECK_EVERY = 32  # soft_nms looks on the host whether boxes remain only every this many selections
SOFT_NMS_METHODS = ("linear", "gaussian")


# ---------------------------------------------------------------- dispatch and argument checks


def _check_inputs(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor | None = None) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4] (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must be [N] = [{boxes.shape[0]}], got {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != (boxes.shape[0],):
        raise ValueError(f"idxs (class per box) must be [N] = [{boxes.shape[0]}], got {tuple(idxs.shape)}")


def _check_iou_threshold(iou_threshold: float) -> None:
    if not 0.0 <= iou_threshold <= 1.0:
        raise UserError(f"NMS iou_threshold must be in [0, 1], got {iou_threshold}")


def _has_kernel(boxes: torch.Tensor) -> bool:
    """Whether torchvision's compiled NMS serves these boxes (its device and dtype), importing it only here."""
    kernel_dtypes = (
        (torch.float32, torch.float64) if boxes.device.type == "cpu" else (torch.float16, torch.float32, torch.float64)
    )
    if boxes.dtype not in kernel_dtypes:
        return False
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)
    except ImportError:
        return False
    key = "CUDA" if boxes.device.type == "cuda" else boxes.device.type.upper()
    return torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::nms", key)


def _empty_keep(boxes: torch.Tensor) -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=boxes.device)


# ---------------------------------------------------------------- greedy NMS


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes by decreasing score; a box goes when its IoU with a kept one is
    > ``iou_threshold``. torchvision's kernel where it exists for the device, ``nms_torch`` elsewhere."""
    _check_inputs(boxes, scores)
    _check_iou_threshold(iou_threshold)
    if boxes.shape[0] == 0:
        return _empty_keep(boxes)
    if _has_kernel(boxes):
        return torch.ops.torchvision.nms(boxes.detach(), scores.detach().to(boxes.dtype), float(iou_threshold))
    return nms_torch(boxes, scores, iou_threshold)


def _suppression_threshold(iou_threshold: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` value <= ``iou_threshold``: for an IoU held in ``dtype``, ``iou > it`` decides exactly
    what ``double(iou) > iou_threshold`` decides (torchvision's CPU test), though torch compares in ``dtype``."""
    t = torch.tensor(iou_threshold, dtype=dtype)
    if t.item() > iou_threshold:  # rounded up: step down one ulp
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return t.item()


def _overlaps(a: torch.Tensor, b: torch.Tensor, threshold: float) -> torch.Tensor:
    """``IoU > threshold`` for every pair of columns of ``a`` [5 or 6, K] and ``b`` [5 or 6, M] -> [K, M] bool.

    Rows are x1, y1, x2, y2, area (and class). The IoU is torchvision's expression, operation for operation, so the
    same floats come out; boxes of different classes never overlap.
    """
    w = torch.minimum(a[2, :, None], b[2, None, :]).sub_(torch.maximum(a[0, :, None], b[0, None, :])).clamp_(min=0)
    h = torch.minimum(a[3, :, None], b[3, None, :]).sub_(torch.maximum(a[1, :, None], b[1, None, :])).clamp_(min=0)
    inter = w.mul_(h)
    union = (a[4, :, None] + b[4, None, :]).sub_(inter)
    over = inter.div_(union) > threshold
    if a.shape[0] > 5:
        over &= a[5, :, None] == b[5, None, :]
    return over


def _resolve_block(over: torch.Tensor) -> torch.Tensor:
    """Greedy NMS inside one block, given ``over[i, j]`` = "i precedes j and suppresses it": which boxes stay.

    Box j stays iff no staying box precedes and overlaps it. Iterating ``keep_j = no kept i with over[i, j]`` from
    "all stay" fixes one more prefix of the order each round (box 0 is right at once; box j as soon as all boxes
    before it are), and its only fixed point is the greedy answer, so stopping when a round changes nothing is
    exact. Rounds = the longest chain of suppressions in the block, a handful on real detections.
    """
    weights = over.to(torch.float32)
    keep = torch.ones(over.shape[0], dtype=torch.float32, device=over.device)
    while True:
        new = (keep @ weights == 0).to(torch.float32)
        if torch.equal(new, keep):
            return new.bool()
        keep = new


def _greedy_sorted(cols: torch.Tensor, threshold: float, block: int) -> torch.Tensor:
    """Greedy NMS over boxes already sorted best first, given as columns (``_overlaps``' layout): kept positions.

    Block by block in score order: resolve the block's survivors among themselves (a block x block matrix), then
    let the kept ones strike every later box they overlap, and drop the struck boxes from the queue. Memory is
    O(N + TILE); a struck box is never looked at again, which is what makes dense clusters cheap.
    """
    rest = torch.arange(cols.shape[1], device=cols.device)
    kept = []
    while rest.numel():
        pos, rest = rest[:block], rest[block:]
        head, tail = cols[:, pos], cols[:, rest]
        keep = _resolve_block(torch.triu(_overlaps(head, head, threshold), diagonal=1))
        winners = head[:, keep]
        kept.append(pos[keep])
        if rest.numel() and winners.shape[1]:
            step = max(1, TILE // winners.shape[1])
            struck = torch.cat(
                [_overlaps(winners, tail[:, s : s + step], threshold).any(0) for s in range(0, rest.numel(), step)]
            )
            rest = rest[~struck]
    return torch.cat(kept)


def nms_torch(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    idxs: torch.Tensor | None = None,
    block: int = NMS_BLOCK,
) -> torch.Tensor:
    """Greedy NMS in plain torch, on any device: the boxes ``torchvision.ops.nms`` keeps, in its order.

    ``idxs`` (class per box, optional) makes it per-class like ``batched_nms``, without offsetting coordinates.
    Never builds an N x N matrix: at most ``block`` x ``block`` and ``TILE`` IoUs at a time. Not differentiable.
    """
    _check_inputs(boxes, scores, idxs)
    _check_iou_threshold(iou_threshold)
    if boxes.shape[0] == 0:
        return _empty_keep(boxes)
    with torch.no_grad():
        scores = scores.to(boxes.dtype)
        order = scores.sort(dim=0, descending=True, stable=True)[1]  # ties in index order, as the kernel
        b = boxes[order]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        rows = [b.T, area[None]]
        if idxs is not None:
            rows.append(idxs[order].to(boxes.dtype)[None])
        cols = torch.cat(rows).contiguous()
        return order[_greedy_sorted(cols, _suppression_threshold(iou_threshold, boxes.dtype), block)]


def _batched_cutoff(device: torch.device) -> int:
    """``boxes.numel()`` above which torchvision's batched_nms loops over classes instead of offsetting boxes."""
    return 4000 if device.type == "cpu" else 100_000


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Per-class NMS (boxes of different ``idxs`` never suppress each other): what ``torchvision.ops.batched_nms``
    keeps, in its order.

    With the kernel it follows torchvision's two strategies (so even borderline floats agree): below the cutoff,
    shift each class's boxes by ``class * (max coordinate + 1)`` so classes cannot overlap and run one NMS; above
    it, one NMS per class, then the kept indices sorted by score. Without the kernel, ``nms_torch`` compares
    classes directly, and the result is put in the same order torchvision's strategy for this size gives.
    """
    _check_inputs(boxes, scores, idxs)
    _check_iou_threshold(iou_threshold)
    if boxes.shape[0] == 0:
        return _empty_keep(boxes)
    large = boxes.numel() > _batched_cutoff(boxes.device)
    if not _has_kernel(boxes):
        keep = nms_torch(boxes, scores, iou_threshold, idxs=idxs)
        return _by_score(keep.sort()[0], scores) if large else keep
    if not large:
        boxes = boxes.detach()
        shift = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
        return nms(boxes + shift[:, None], scores, iou_threshold)
    kept = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for cls in torch.unique(idxs):
        members = torch.where(idxs == cls)[0]
        kept[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    return _by_score(torch.where(kept)[0], scores)


def _by_score(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Kept indices (ascending) by decreasing score, with the very call torchvision's Python code makes here
    (unstable: its tie order is ATen's, which this reproduces exactly by making the same call)."""
    return keep[scores[keep].sort(descending=True)[1]]


# ---------------------------------------------------------------- Soft-NMS


def _check_soft_nms_args(iou_threshold: float, sigma: float, method: str, score_threshold: float) -> None:
    if method not in SOFT_NMS_METHODS:
        raise UserError(f"soft_nms method must be one of {', '.join(SOFT_NMS_METHODS)}, got {method!r}")
    _check_iou_threshold(iou_threshold)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise UserError(f"soft_nms sigma must be a positive number, got {sigma}")
    if not 0.0 <= score_threshold <= 1.0:
        raise UserError(f"soft_nms score_threshold must be in [0, 1], got {score_threshold}")


def _decay(iou: torch.Tensor, method: str, iou_threshold: float, sigma: float) -> torch.Tensor:
    """Soft-NMS's rescoring factor f(IoU): linear 1 - IoU where IoU >= N_t (1 below), gaussian exp(-IoU^2 / sigma)."""
    if method == "linear":
        return torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
    return torch.exp(-(iou * iou) / sigma)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
    idxs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., ICCV 2017, Algorithm 1): returns ``(keep, kept_scores)``.

    Repeatedly take the highest-scoring remaining box (the first one on a tie), keep it, and multiply every
    remaining box's score by f(IoU with it): ``linear`` f = 1 - IoU where IoU >= ``iou_threshold`` (the paper's
    N_t; 1 otherwise), ``gaussian`` f = exp(-IoU^2 / ``sigma``) for every box (``iou_threshold`` unused). A box whose
    score is below ``score_threshold`` is dropped, including on entry (as the authors' code does once the first
    pass decays). ``keep`` lists the kept indices in the order they were selected, ``kept_scores`` their decayed
    scores. ``idxs`` (class per box) makes it per-class: boxes of different classes never decay each other. The
    defaults (N_t 0.3, sigma 0.5, threshold 0.001) are the paper's and its code's. IoU is the exact one (no eps).

    The selection loop is sequential, each step a few tensor ops on the remaining boxes, with no host sync except
    a check every ``SOFT_NMS_CHECK_EVERY`` steps whether boxes remain (dropped ones are then compacted away).
    Practical up to ~10^4 boxes. No gradient flows to the outputs.
    """
    _check_inputs(boxes, scores, idxs)
    _check_soft_nms_args(iou_threshold, sigma, method, score_threshold)
    device = boxes.device
    with torch.no_grad():
        alive = torch.where(scores >= score_threshold)[0]  # indices into the input
        box = boxes[alive]
        score = scores[alive].clone()
        cls = idxs[alive] if idxs is not None else None
        area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
        picked, picked_scores = [], []
        while alive.numel():
            sel = torch.empty(SOFT_NMS_CHECK_EVERY, dtype=torch.int64, device=device)
            sel_scores = torch.empty(SOFT_NMS_CHECK_EVERY, dtype=score.dtype, device=device)
            live = torch.ones_like(score, dtype=torch.bool)
            for step in range(SOFT_NMS_CHECK_EVERY):
                best = torch.where(live, score, -math.inf).argmax()
                # once nothing is live, argmax lands on a dead box: recorded, then masked out below
                sel[step], sel_scores[step] = best, torch.where(live[best], score[best], -math.inf)
                live[best] = False
                iou = _iou_one_to_many(box[best], area[best], box, area)
                factor = _decay(iou, method, iou_threshold, sigma)
                if cls is not None:
                    factor = torch.where(cls == cls[best], factor, 1.0)
                score = torch.where(live, score * factor, score)
                live &= score >= score_threshold
            valid = sel_scores > -math.inf  # one host sync per SOFT_NMS_CHECK_EVERY selections
            picked.append(alive[sel[valid]])
            picked_scores.append(sel_scores[valid])
            alive, box, score, area = alive[live], box[live], score[live], area[live]
            cls = cls[live] if cls is not None else None
        if not picked:
            return _empty_keep(boxes), scores.new_empty(0)
        return torch.cat(picked), torch.cat(picked_scores)


def _iou_one_to_many(one: torch.Tensor, one_area: torch.Tensor, many: torch.Tensor, many_area: torch.Tensor):
    """IoU of one box with each of ``many`` [M, 4], inter / union as in NMS (a zero union gives 0, not NaN)."""
    w = (torch.minimum(one[2], many[:, 2]) - torch.maximum(one[0], many[:, 0])).clamp_(min=0)
    h = (torch.minimum(one[3], many[:, 3]) - torch.maximum(one[1], many[:, 1])).clamp_(min=0)
    inter = w * h
    union = one_area + many_area - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def soft_nms_batch(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: str = "linear",
    score_threshold: float = 0.001,
    idxs: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``soft_nms`` on B independent sets of K boxes at once (a batch of images): ``boxes`` [B, K, 4],
    ``scores`` [B, K], optional ``idxs`` [B, K] (class per box) and ``valid`` [B, K] (False: padding).

    Returns ``(kept, decayed)``, both [B, K]: whether each box was kept, and its score when it was selected
    (the same boxes and scores ``soft_nms`` gives each set alone). The K selection steps each run on the
    whole batch; a host sync every ``SOFT_NMS_CHECK_EVERY`` steps ends the loop once no set has boxes left.
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:2]:
        raise ValueError(f"boxes must be [B, K, 4] and scores [B, K], got {tuple(boxes.shape)}, {tuple(scores.shape)}")
    _check_soft_nms_args(iou_threshold, sigma, method, score_threshold)
    with torch.no_grad():
        b, k = scores.shape
        area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
        lt = torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])
        rb = torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        union = area[:, :, None] + area[:, None, :] - inter
        factors = _decay(torch.where(union > 0, inter / union, torch.zeros_like(inter)), method, iou_threshold, sigma)
        if idxs is not None:  # boxes of different classes never decay each other
            factors = torch.where(idxs[:, :, None] == idxs[:, None, :], factors, torch.ones_like(factors))
        score = scores.clone()
        live = score >= score_threshold
        if valid is not None:
            live &= valid
        kept = torch.zeros_like(live)
        decayed = torch.zeros_like(score)
        rows = torch.arange(b, device=boxes.device)
        for step in range(k):
            if step % SOFT_NMS_CHECK_EVERY == 0 and not bool(live.any()):
                break
            best = torch.where(live, score, -math.inf).argmax(1)  # [B]
            chosen = live[rows, best]  # False where a set has none left
            kept[rows, best] |= chosen
            decayed[rows, best] = torch.where(chosen, score[rows, best], decayed[rows, best])
            live[rows, best] = False
            score = torch.where(live, score * factors[rows, best], score)
            live &= score >= score_threshold
        return kept, decayed
