"""DARTS: differentiable architecture search (supernet, bilevel step, derivation, latency)."""
