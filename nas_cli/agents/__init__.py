"""Reinforcement-learning agents on Gymnasium: the DQN family, its replay storage, Q-networks,
environments and plots; ``loop``: what the agents' loops and commands share."""
