"""Model and data tools: BatchNorm folding (``fuse_bn/``), ONNX / TorchScript export (``export``), the
ILSVRC2012 archives as image folders (``imagenet/``)."""
