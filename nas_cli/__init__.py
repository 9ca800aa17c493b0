"""nas-cli: a command-line experiment runner for deep-learning research."""

__version__ = "0.1.0"
