"""A config node read back from a run folder, made safe to instantiate.

A run folder (``.hydra/config.yaml``, a detector's ``detector.json``) may come from someone else, so
what it holds is data. Hydra's ``instantiate`` calls whatever ``_target_`` a node names, at any depth
(``model: {_target_: nas_cli.models.cnn.SmallCNN, init: {_target_: pathlib.Path.write_text, ...}}``
writes a file before the model exists), and it resolves ``${...}`` interpolations on the way, where
``${oc.decode:...}`` can build such a node from a string. So a saved node is rebuilt only from the
project's own targets:

* its top-level ``_target_`` must be one that a shipped ``conf/<group>/*.yaml`` names, and every other
  key Hydra acts on (``_target_``, ``_args_``, ``_partial_``, ``_recursive_``, ``_convert_``) may appear
  only where a shipped config of that group has it, with a value a shipped config gives it there. The
  shipped ``model`` and ``data`` configs have no nested targets and none of the other keys, so for them
  this means: one ``_target_``, at the top, from the shipped set, and nothing else;
* interpolations are resolved with no resolvers at all: ``${data.batch_size}``-style references to
  other values of the same file are followed, a resolver call (``${oc.env:...}``, ``${now:...}``,
  ``${mul:...}``) is refused, since its value would come from the reader's machine and not the file.
  Hydra saves ``config.yaml`` unresolved, so references do occur there. A string that still holds
  ``${`` once resolved (an escaped ``\\${...}``) is refused too: ``instantiate`` would resolve it again,
  with every resolver.

Every refusal is one ``UserError`` line naming the file and the key, raised before anything is built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer
from omegaconf.errors import OmegaConfBaseException, UnsupportedInterpolationType

from nas_cli.config_files import config_dir
from nas_cli.errors import UserError

HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")  # the keys instantiate acts on
REFUSED = "nothing was run"


@cache
def shipped_places(group: str) -> dict[str, frozenset]:
    """``{dotted key: values}`` of every Hydra key in the shipped ``conf/<group>/*.yaml`` (``{"_target_": ...}``)."""
    places: dict[str, set] = {}
    for path in sorted((config_dir() / group).glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for key, value in _hydra_keys(node, ""):
            places.setdefault(key, set()).add(_hashable(value))
    return {key: frozenset(values) for key, values in places.items()}


def own_targets(group: str) -> frozenset[str]:
    """The ``_target_`` values of the shipped ``conf/<group>/*.yaml``: the closed set a saved node may name."""
    return shipped_places(group).get("_target_", frozenset())


def load(path: Path, where: str) -> DictConfig:
    """A saved YAML config (``.hydra/config.yaml``) as a mapping, its interpolations left unresolved."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as ex:  # PyYAML and OmegaConf raise many types for a damaged file
        raise UserError(f"{where}: not a readable config ({type(ex).__name__}); {REFUSED}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{where}: not a config mapping; {REFUSED}")
    return cfg


def plain_value(cfg: DictConfig | dict, key: str, where: str, default: Any = None) -> Any:
    """``cfg[key]`` resolved with no resolvers (a plain value or container); ``default`` when absent."""
    with _no_resolvers():
        try:
            cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
            if key not in cfg:
                return default
            value = cfg[key]
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as ex:
            first = str(ex).splitlines()[0] if str(ex) else type(ex).__name__
            why = (
                " (a saved config is read with its plain values and ${key} references only, no resolvers)"
                if isinstance(ex, UnsupportedInterpolationType)
                else ""
            )
            raise UserError(f"{where}: {getattr(ex, 'full_key', None) or key}: {first}{why}; {REFUSED}") from None
    for dotted, text in _strings(value, key):
        if "${" in text:
            raise UserError(
                f"{where}: {dotted}={text!r} would be resolved again when built: a saved config "
                f"holds no interpolation once resolved; {REFUSED}"
            )
    return value


def checked_node(cfg: DictConfig | dict, group: str, where: str) -> dict:
    """``cfg[group]`` as a plain dict that ``instantiate`` may build: see the module docstring for the rule.

    ``where`` begins each error line (``source=RUN: RUN/.hydra/config.yaml``).
    """
    node = plain_value(cfg, group, where)
    if node is None:
        raise UserError(f"{where}: no {group} config to rebuild from; {REFUSED}")
    if not isinstance(node, dict):
        raise UserError(f"{where}: {group} is not a config mapping; {REFUSED}")
    if "_target_" not in node:
        raise UserError(f"{where}: {group} has no _target_ (one of nas-cli's own {group} targets); {REFUSED}")
    places = shipped_places(group)
    for dotted, value in _hydra_keys(node, ""):
        allowed = places.get(dotted)
        if allowed is not None and _hashable(value) in allowed:
            continue
        what = (
            f"one of nas-cli's own {group} targets"
            if dotted.rsplit(".", 1)[-1] == "_target_"
            else f"a key nas-cli's own {group} configs use there"
        )
        raise UserError(f"{where}: {group}.{dotted}={_shown(value)} is not {what}; {REFUSED}")
    return node


@contextmanager
def _no_resolvers() -> Iterator[None]:
    """OmegaConf's resolver table emptied for the duration: any ``${name:...}`` is then an error.

    The table is global; this runs in the main thread while a command reads its source, before any work.
    """
    saved = BaseContainer._resolvers
    BaseContainer._resolvers = {}
    try:
        yield
    finally:
        BaseContainer._resolvers = saved


def _hydra_keys(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """``(dotted key, value)`` of every Hydra key at any depth of a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if key in HYDRA_KEYS:
                yield dotted, value
            yield from _hydra_keys(value, f"{dotted}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _hydra_keys(value, f"{prefix}{i}.")


def _strings(node: Any, dotted: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield dotted, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{dotted}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{dotted}.{i}")


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
