"""nas-cli: a command-line experiment runner for deep-learning research."""

__version__ = "0.1.0"

# ${mul:..} and ${div:..} for configs: registered before any config is resolved, on every path (CLI, sweeps,
# the compose API, an installed wheel)
from nas_cli import resolvers as _resolvers  # noqa: E402,F401
