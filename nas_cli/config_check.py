"""A command line checked against its command's schema before anything runs.

The command line's overrides are composed into the command's config with Hydra's compose API (every
job of a sweep), and the composed config is checked against ``nas_cli.schema``: each key's type, range
or choices, keys that nothing reads (``+bogus=3``, a typo such as ``optim.lrr``, with the closest real
keys as "did you mean"), and the rules that tie keys together (``agent.learning_starts`` below
``total_steps``, a held-out ``val_size`` smaller than the data). The first violation is one line naming
the key, the value and the rule, and the command stops there: no run folder, log or tracker exists yet,
and torch has not been imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from nas_cli import schema
from nas_cli.config_files import config_dir
from nas_cli.errors import UserError

MULTIRUN = ("-m", "--multirun")
MAX_JOBS = 64  # a sweep's jobs checked one by one (past that, the first 64: each job costs a composition)
_NOT_IN_STRUCT = re.compile(r"Could not override '(?P<key>[^']+)'")
_DATA_SIZES = {"digits": 1797, "mnist5k": 5000}  # the embedded sets' images (train + validation)


def check_command_line(
    command: str, config_name: str, args: list[str], describe: Callable[[str, str, str], str | None] | None = None
) -> None:
    """Raise a one-line ``UserError`` for the first thing in ``args`` that the command's schema refuses.

    ``describe(command, group, option)``: the line for an option the command has not (the caller's, the
    bridge's ``unknown_option``: this module imports nothing above it); None, or no line from it: a plain one.
    """
    if any(a.startswith("-") and a not in MULTIRUN for a in args):  # Hydra's own flags: Hydra answers them
        return
    overrides = [a for a in args if a not in MULTIRUN]
    parsed = _parse(overrides)
    _check_options(command, parsed, describe)
    jobs = _jobs(parsed) if len(overrides) != len(args) else [overrides]
    with _hydra():
        for job in jobs[:MAX_JOBS]:
            config, choices = _compose(command, config_name, job)
            rules = schema.rules_for(config_name, choices)
            _check_deleted(command, parsed, rules)
            found = schema.violations(config, rules)
            if found:
                raise UserError(_explain(command, found[0], rules, len(found)))
            for rule in CROSS:
                problem = rule(config, choices)
                if problem:
                    raise UserError(problem)


# -- parsing and composing ---------------------------------------------------------------------------------


def _parse(overrides: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as ex:
        raise UserError(f"cannot read the override: {str(ex).splitlines()[0]}") from None


def _jobs(parsed: list) -> list[list[str]]:
    """Every job of a sweep as its own list of overrides (a sweep the basic sweeper cannot list: the fixed part)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # interval(...) and the like belong to other sweepers: check what is fixed
        return [[o.input_line for o in parsed if not o.is_sweep_override()]]
    return batches[0] if batches else [[]]


@contextmanager
def _hydra() -> Iterator[None]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            yield
    finally:
        GlobalHydra.instance().clear()


def _compose(command: str, config_name: str, job: list[str]) -> tuple[dict, dict]:
    """The job's config (resolved, plain containers, without ``hydra``) and its group choices."""
    from hydra import compose
    from hydra.errors import ConfigCompositionException
    from omegaconf import open_dict

    from nas_cli.config_values import as_dict

    try:
        cfg = compose(config_name, overrides=job, return_hydra_config=True)
    except ConfigCompositionException as ex:
        m = _NOT_IN_STRUCT.search(str(ex))
        if m is None:
            raise
        key = m["key"]
        rest = [o for o in job if o.split("=", 1)[0].lstrip("+~") != key]
        config, choices = _compose(command, config_name, rest)
        keys = list(schema.rules_for(config_name, choices))
        raise UserError(_no_such_key(command, key, keys)) from None
    choices = {k: v for k, v in as_dict(cfg.hydra.runtime.choices, resolve=False).items()}
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        config = as_dict(cfg, resolve=True)
    except Exception as ex:  # an interpolation that names nothing: say where
        raise UserError(f"{getattr(ex, 'full_key', '') or 'config'}: {str(ex).splitlines()[0]}") from None
    return config, choices


# -- what is refused ---------------------------------------------------------------------------------------


def _check_options(command: str, parsed: list, describe: Callable[[str, str, str], str | None] | None) -> None:
    """``group=option`` names an option this command has (``detect model=nope`` lists detect's models)."""
    for o in parsed:
        group = o.key_or_group
        if "." in group or group.startswith("hydra") or o.is_delete() or not (config_dir() / group).is_dir():
            continue
        values = (
            [str(v) for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.get_value_element_as_str()]
        )
        for name in values:
            if name in ("null", "None"):
                continue
            if not (config_dir() / group / f"{name}.yaml").is_file():
                line = describe(command, group, name) if describe else None
                raise UserError(
                    line
                    or f"{group}={name}: nas-cli {command} has no such {group} option "
                    f"(`nas-cli {command} --help` lists its groups and options)"
                )


def _check_deleted(command: str, parsed: list, rules: Mapping[str, schema.Rule]) -> None:
    for o in parsed:
        if o.is_delete() and o.key_or_group in rules:
            raise UserError(
                f"~{o.key_or_group}: nas-cli {command} reads every key of its config; give it a value "
                f"instead ({rules[o.key_or_group].describe()})"
            )


def _explain(command: str, violation: schema.Violation, rules: Mapping[str, schema.Rule], count: int) -> str:
    if violation.rule is None:
        line = _no_such_key(command, violation.key, list(rules))
    else:
        line = violation.line()
    return line + (f" (and {count - 1} more)" if count > 1 else "")


def _no_such_key(command: str, key: str, keys: list[str]) -> str:
    close = schema.closest(key, keys)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; `nas-cli {command} --help` lists its keys"
    return f"{key}: nas-cli {command} has no such key, and nothing would read it{hint}"


# -- rules that tie keys together --------------------------------------------------------------------------


def _number(config: Mapping, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _learning_starts(config: Mapping, choices: Mapping) -> str | None:
    starts, total = _number(config, "agent.learning_starts"), _number(config, "total_steps")
    if (
        isinstance(starts, int)
        and isinstance(total, int)
        and config.get("mode", "train") == "train"
        and starts >= total
    ):
        return f"agent.learning_starts={starts}: expected fewer than total_steps={total} (no update would ever be made)"
    return None


def _held_out(config: Mapping, choices: Mapping) -> str | None:
    """A held-out ``val_size`` leaves training images, where the data's size is known before loading it."""
    data = config.get("data")
    if not isinstance(data, Mapping):
        return None
    size = _DATA_SIZES.get(choices.get("data") or "") or data.get("n_train")
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    subset = data.get("subset")
    if isinstance(subset, int) and not isinstance(subset, bool) and 0 < subset < size:
        size = subset
    val = data.get("val_size")
    if isinstance(val, int) and not isinstance(val, bool) and val >= size:
        return f"data.val_size={val}: expected fewer than the {size} images it is held out of"
    return None


def _trained_within_children(config: Mapping, choices: Mapping) -> str | None:
    trained, children = _number(config, "search.trained"), _number(config, "search.children")
    if isinstance(trained, int) and isinstance(children, int) and trained > children:
        return f"search.trained={trained}: expected at most search.children={children} (the proposals made)"
    return None


CROSS: list[Callable[[Mapping, Mapping], str | None]] = [_learning_starts, _held_out, _trained_within_children]
