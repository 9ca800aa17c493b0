"""Models. Each constructor takes ``in_shape`` and ``num_classes`` (given by the data) plus its config keys."""
