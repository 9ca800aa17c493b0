"""BatchNorm folding: ``fold`` folds each provable layer -> BatchNorm pair of a model into the layer (the
algorithm, on torch modules alone); ``recipe`` is ``nas-cli fuse-bn``'s work around it: load the source model,
fuse it, check the outputs, export and check the file, time both models and write the run."""
