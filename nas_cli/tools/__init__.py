"""Model tools: BatchNorm folding (``nas_cli.tools.fuse_bn``) and others."""
