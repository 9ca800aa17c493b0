"""Reinforcement learning: replay storage, Q-networks, environments, the DQN family."""
