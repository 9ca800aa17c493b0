"""NAS with reinforcement learning (Zoph & Le 2017, MetaQNN) and its baselines (random, regularized evolution)."""
