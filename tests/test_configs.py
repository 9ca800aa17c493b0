"""Every shipped config, checked the way torchtune checks its recipes' configs: each file under conf/ composes
with its command's primary config, and every key of a ``_target_`` node is a parameter of that target."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.utils import _locate
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nas_cli.cli import HYDRA_COMMANDS
from nas_cli.hydra_bridge import belongs, command_help, config_dir, preset_command

CONFIGS = {name: name.replace("-", "_") for name in HYDRA_COMMANDS}  # command -> primary config
SHARED = ("seed", "device", "threads", "progress", "resume")
GROUPS = {  # the groups each command's --help lists: those it composes that offer it an option of their own
    "train": {"data", "experiment", "hparams_search", "logger", "model", "optim", "regularizer", "sched", "trainer"},
    "search-darts": {"logger", "data", "experiment", "optim", "sched", "supernet", "trainer"},
    "search-rl": {"logger", "controller", "data", "experiment", "optim", "sched", "space"},
    "dqn": {"logger", "agent", "env", "experiment", "optim", "sched"},  # dqn_env follows env: no choice of its own
    "pg": {"logger", "env", "optim"},  # pg_env follows env; no preset is pg's, ga's or detect's
    "ga": {"logger", "env"},
    "detect": {"logger", "data", "model", "optim", "sched", "trainer"},
    "fuse-bn": {"logger"},
    "grad-bench": {"logger"},
    "prep-imagenet": {"logger"},
}


def composed(config: str, overrides: list[str] = ()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config, overrides=list(overrides), return_hydra_config=True)
        options = {g: GlobalHydra.instance().config_loader().get_group_options(g) for g in cfg.hydra.runtime.choices}
    GlobalHydra.instance().clear()
    return cfg, options


def cases() -> list[tuple[str, str, str]]:
    out = []
    for command, config in CONFIGS.items():
        cfg, options = composed(config)
        for group in cfg.hydra.runtime.choices:
            if group.startswith("hydra/") and command != "train":
                continue  # Hydra's own groups are the same for every command: composed with train's
            out += [
                (command, group, option) for option in options[group] if belongs(group, option, command)
            ]  # a tagged option (every preset) names its command(s)
    return out


CASES = cases()


def targets(node, path: str = ""):
    """(path, node) of every ``_target_`` node below ``node`` (a plain container)."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from targets(value, f"{path}[{i}]")


def check_targets(cfg) -> int:
    plain = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    plain.pop("hydra", None)
    checked = 0
    for path, node in targets(plain):
        target = _locate(node["_target_"])
        params = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        unknown = [k for k in node if not k.startswith("_") and k not in params]
        assert not unknown, f"{path} ({node['_target_']}): {unknown} are not parameters"
        checked += 1
    return checked


@pytest.mark.parametrize("command, group, option", CASES, ids=[f"{c}:{g}={o}" for c, g, o in CASES])
def test_every_option_composes_and_fits_its_target(command, group, option):
    cfg, _ = composed(CONFIGS[command], [f"{group}={option}"])
    assert cfg.hydra.runtime.choices[group] == option
    check_targets(cfg)


def test_every_file_under_conf_belongs_to_a_command():
    files = {p.relative_to(config_dir()).with_suffix("").as_posix() for p in config_dir().rglob("*.yaml")}
    covered = set(CONFIGS.values()) | {f"{group}/{option}" for _, group, option in CASES}
    assert files - covered == set()


@pytest.mark.parametrize("command", list(CONFIGS))
def test_primary_configs_share_the_run_keys_and_fit_their_targets(command):
    cfg, _ = composed(CONFIGS[command], ["seed=1", "device=cpu", "threads=null", "progress=false"])
    for key in SHARED:
        assert key in cfg, f"{command} has no {key}"
    assert (cfg.seed, cfg.device, cfg.threads, cfg.progress) == (1, "cpu", None, False)
    check_targets(cfg)


@pytest.mark.parametrize("command", list(CONFIGS))
def test_help_lists_only_the_groups_the_command_composes(command):
    text = command_help(CONFIGS[command], [])
    GlobalHydra.instance().clear()
    section = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = {line.split(":")[0] for line in section.splitlines() if ": " in line}
    assert listed == GROUPS[command]


def test_a_shipped_target_node_is_really_checked():
    """The check above finds the trainer, the optimizer and the model of train, and a wrong key fails it."""
    cfg, _ = composed("train")
    assert check_targets(cfg) >= 6
    OmegaConf.set_struct(cfg, False)
    with pytest.raises(AssertionError, match="not parameters"):
        check_targets(OmegaConf.merge(cfg, {"trainer": {"epochz": 3}}))


def test_configs_ship_inside_the_package_layout():
    assert Path(config_dir()).name == "conf" and (config_dir() / "train.yaml").is_file()


def test_every_preset_names_its_command_and_lists_only_under_it():
    presets = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
    assert presets and all(preset_command(p) in CONFIGS for p in presets), [(p, preset_command(p)) for p in presets]
    for command, config in CONFIGS.items():
        if "experiment" not in GROUPS[command]:
            continue
        line = next(ln for ln in command_help(config, []).splitlines() if ln.startswith("experiment: "))
        GlobalHydra.instance().clear()
        assert set(line.removeprefix("experiment: ").split(", ")) - {""} == {
            p for p in presets if preset_command(p) == command
        }


def test_a_preset_of_another_command_is_refused_in_one_line():
    from nas_cli.errors import UserError
    from nas_cli.hydra_bridge import _refuse_foreign_options

    with pytest.raises(UserError, match="is a preset of `nas-cli train`"):
        _refuse_foreign_options("dqn", ["experiment=xnor_width_wd_smoke"])
    _refuse_foreign_options("train", ["-m", "experiment=xnor_width_wd_smoke,xnor_width_wd"])
