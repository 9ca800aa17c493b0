"""The one training engine: device and precision, the epoch loop, checkpoints, the run record; ``recipe``:
``nas-cli train``'s one model or ensemble."""
