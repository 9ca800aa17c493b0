"""Which grid cell learns which ground-truth box (the positives of the loss).

FCOS's rule with its centre sampling (Tian et al. 2019, and the "center sampling" of its code): a cell is
a candidate for a box when the cell's centre lies inside the box and within ``radius`` strides of the
box's centre; a cell claimed by several boxes learns the one of smallest area. One addition: a box whose
region holds no cell centre (smaller than a cell) is given the cell nearest its centre, so no object
goes unlearned.
"""

from __future__ import annotations

import torch


def assign(centers: torch.Tensor, targets: torch.Tensor, stride: int, radius: float = 1.5) -> torch.Tensor:
    """The ground-truth row each cell learns, or -1: ``[B, P]`` from cell ``centers`` ``[P, 2]`` and padded
    ``targets`` ``[B, M, 5]`` (class, x1, y1, x2, y2; class -1 for padding). No host sync."""
    valid = targets[..., 0] >= 0  # [B, M]
    boxes = targets[..., 1:]
    cx, cy = centers[:, 0].view(1, -1, 1), centers[:, 1].view(1, -1, 1)  # [1, P, 1]
    x1, y1, x2, y2 = (boxes[..., i].unsqueeze(1) for i in range(4))  # [B, 1, M]
    inside = (cx > x1) & (cx < x2) & (cy > y1) & (cy < y2)
    reach = radius * stride
    near = ((cx - (x1 + x2) / 2).abs() < reach) & ((cy - (y1 + y2) / 2).abs() < reach)
    candidate = inside & near & valid.unsqueeze(1)  # [B, P, M]
    # the cell nearest each box's centre is always a candidate for it
    box_centers = torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)
    nearest = torch.cdist(box_centers.float(), centers.float().unsqueeze(0).expand(len(boxes), -1, -1)).argmin(-1)
    candidate.scatter_(1, nearest.unsqueeze(1), valid.unsqueeze(1) | candidate.gather(1, nearest.unsqueeze(1)))
    area = ((x2 - x1) * (y2 - y1)).expand_as(candidate)
    smallest = torch.where(candidate, area, torch.full_like(area, float("inf"))).min(-1)
    return torch.where(torch.isfinite(smallest.values), smallest.indices, torch.full_like(smallest.indices, -1))
