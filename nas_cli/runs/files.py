"""Every file name in a run folder, defined once.

``report`` reads the first three (plus Hydra's ``.hydra/``); the rest are each command's artifacts.
"""

from __future__ import annotations

from pathlib import Path

# the run record: every command, every run
METRICS = "metrics.csv"  # a row per epoch / step / evaluation / child
SUMMARY = "summary.json"  # status, headline figures, wall time, device, seed, versions
CHECKPOINT = Path("checkpoints") / "last.pt"  # everything needed to resume, written atomically
HYDRA = Path(".hydra")
CONFIG = HYDRA / "config.yaml"  # Hydra's composed config
OVERRIDES = HYDRA / "overrides.yaml"  # the command line's overrides

# training (train, search-darts, children)
WEIGHTS = "model.pt"  # the final weights
EMA_WEIGHTS = "model_ema.pt"  # the weight average (ema.decay)
STEPS = "steps.csv"  # the training loss of every iteration
SNAPSHOTS = "snapshots"  # a model per cycle of sched=cyclic_cosine
MEMBERS = "members"  # ensemble members, one run folder each
MEMBERS_TABLE = "members.csv"

# agents (dqn)
BEST = "best.pt"  # the best evaluation's weights
RETURNS_PLOT = "returns.png"
EVAL_RETURNS = "returns.txt"  # mode=eval: one return per episode

# search-darts
GENOTYPE = "genotype.json"
GENOTYPES = "genotypes"  # the genotype after each epoch
LATENCY = "latency.json"  # the per-op latency table

# search-rl
BEST_ARCH = "best_arch.json"
CACHE = "cache.json"  # reward and parameters per architecture
CHILDREN = "children"  # each trained child's own run folder

# detect
DETECTOR = "detector.json"  # what predicting needs besides model.pt (model config, classes, ...)
DETECTIONS_PLOT = "detections.png"  # validation images with their detections, after training
PREDICTIONS = "predictions"  # mode=predict: each image with its boxes drawn
DETECTIONS = "detections.json"  # mode=predict: every image's detections

# fuse-bn
FUSED = "fused.pt"

# grad-bench
BEST_TABLE = "best.csv"
BEST_MARKDOWN = "best.md"
CURVES = "curves.csv"
LR_PLOT = "loss_decrease_vs_lr.png"
DIM_PLOT = "best_decrease_vs_num_dim.png"
