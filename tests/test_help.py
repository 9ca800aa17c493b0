"""`nas-cli COMMAND --help`: only the command's own groups and options, every key with its rule, default and
help (from the shipped YAML, through nas_cli.schema), printed without importing torch; an unknown option is one
line naming only that command's options; report skips what a job that never started leaves behind."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fake_job
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nas_cli import schema
from nas_cli.cli import HYDRA_COMMANDS
from nas_cli.errors import UserError
from nas_cli.hydra_bridge import (
    _refuse_foreign_options,
    belongs,
    command_help,
    config_dir,
    unknown_option,
)

WIDTH = 100
FOLLOWERS = {"dqn": "dqn_env", "pg": "pg_env"}  # picked by ${env}: no choice of their own


def composed(config: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(config, return_hydra_config=True)
    GlobalHydra.instance().clear()
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    OmegaConf.set_struct(cfg, False)
    cfg.pop("hydra")
    return OmegaConf.to_container(cfg, resolve=False), choices


def sections(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``{group: options}`` of the groups section and ``{key: its row's text}`` of the config table."""
    groups_part = (
        text.split("== Configuration groups ==")[1].split("== Config ==")[0]
        if ("== Configuration groups ==" in text)
        else ""
    )
    groups = {g: o.split(", ") for g, o in (ln.split(": ", 1) for ln in groups_part.splitlines() if ": " in ln)}
    table = text.split("== Config ==")[1].split("\nExamples:")[0].splitlines()
    start = next(i for i, ln in enumerate(table) if ln.startswith("key ")) + 2  # after the header and the rule
    rows: dict[str, str] = {}
    key = None
    for line in table[start:]:
        if not line.strip():
            continue
        if line[0] != " ":
            key = line.split()[0]
            rows[key] = line[len(key) :]
        else:
            rows[key] += " " + line
    return groups, {k: " ".join(v.split()) for k, v in rows.items()}


def has(cfg: dict, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return False
        cfg = cfg[part]
    return True


@pytest.fixture
def columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))


@pytest.mark.parametrize("command", list(HYDRA_COMMANDS))
def test_help_lists_only_the_commands_groups_options_and_keys(command, columns):
    config = command.replace("-", "_")
    text = command_help(config, [])
    groups, rows = sections(text)
    cfg, choices = composed(config)
    for group, options in groups.items():
        assert group in choices and not group.startswith("hydra/")
        assert options and options != [""], f"{group} is listed with no option"
        assert all(belongs(group, o, command) for o in options), (group, options)
        assert set(options) == {
            p.stem for p in (config_dir() / group).glob("*.yaml") if belongs(group, p.stem, command)
        }
    assert FOLLOWERS.get(command) not in groups
    if command in ("pg", "ga", "detect"):  # no preset is theirs
        assert "experiment" not in groups
    # every setting of the composed config has its row, and nothing else does
    rules = schema.rules_for(config, choices)
    present = [k for k in rules if has(cfg, k)]
    assert present and set(present) <= set(rows), set(present) - set(rows)
    assert [k for k in rows if not has(cfg, k)] == []
    assert all(len(line) <= WIDTH for line in text.split("== Config ==")[1].split("\nExamples:")[0].splitlines())


def test_a_row_shows_the_keys_rule_default_and_help(columns):
    cfg, choices = composed("train")
    rule = schema.rules_for("train", choices)["trainer.epochs"]
    assert rule.help, "trainer.epochs has help in conf/trainer/default.yaml"
    _, rows = sections(command_help("train", ["trainer.epochs=3"]))
    row = rows["trainer.epochs"]
    assert row == " ".join(f"3 {rule.describe()} — {rule.help}".split())  # the default here: the override's
    _, rows = sections(command_help("train", []))
    assert rows["trainer.epochs"].startswith(f"{cfg['trainer']['epochs']} {rule.describe()}")
    assert rows["optim.lr"].startswith(f"{cfg['optim']['lr']} ")
    assert "model.width" in rows and "_target_" not in " ".join(rows)


def test_help_follows_the_groups_chosen_on_the_command_line(columns):
    groups, rows = sections(command_help("train", ["model=resnet18", "optim=sgd"]))
    assert "optim.momentum" in rows and "optim.betas" not in rows
    assert set(groups["optim"]) >= {"adam", "sgd"}


SCRIPT = r"""
import sys
from nas_cli.cli import HYDRA_COMMANDS, app

for words in [["--help"], ["report", "--help"], *([c, "--help"] for c in HYDRA_COMMANDS),
              ["detect", "model=nope"], ["train", "optim=adamm", "--help"]]:
    try:
        app(words, prog_name="nas-cli")
    except SystemExit as ex:
        print(f"exit {ex.code}: {' '.join(words)}", flush=True)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "nas_cli.commands.")))
print("LOADED", loaded)
"""


def test_help_and_a_refused_option_never_import_torch_or_the_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": str(WIDTH)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.rstrip().splitlines()[-1] == "LOADED []", out.stdout[-2000:]
    assert out.stdout.count("== Config ==") == len(HYDRA_COMMANDS)
    assert "exit 2: detect model=nope" in out.stdout and "exit 2: train optim=adamm --help" in out.stdout
    assert "model=nope: nas-cli detect has no such model option" in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_option_lists_only_the_commands_options_closest_first():
    line = unknown_option("detect", "model", "nope")
    detect_models = [p.stem for p in (config_dir() / "model").glob("*.yaml") if belongs("model", p.stem, "detect")]
    train_models = [p.stem for p in (config_dir() / "model").glob("*.yaml") if not belongs("model", p.stem, "detect")]
    assert "\n" not in line and detect_models and train_models
    assert all(m in line for m in detect_models)
    assert not any(re.search(rf"\b{m}\b", line) for m in train_models), line

    line = unknown_option("train", "optim", "adamm")
    assert line.startswith("optim=adamm: nas-cli train has no such optim option; did you mean adam or adamw?"), line
    assert line.index("adamw") < line.index("sgd")  # the closest first, then the others
    with pytest.raises(UserError) as refused:
        _refuse_foreign_options("train", ["-m", "optim=sgd,adamm"])
    assert str(refused.value) == line

    assert unknown_option("train", "optim", "adam") is None  # an option it has
    assert unknown_option("train", "experiment", "null") is None
    assert unknown_option("train", "env", "nope") is None  # not a group train composes: Hydra says how to add one
    assert "nas-cli pg has no such experiment option" in unknown_option("pg", "experiment", "dqn_atarri")
    foreign = unknown_option("detect", "model", "resnet18")  # train's model: name the command that takes it
    assert foreign.startswith("model=resnet18 is an option of `nas-cli train`") and "detector" in foreign


def test_report_ignores_a_folder_a_job_never_started_in(tmp_path):
    from nas_cli.commands import report

    fake_job(tmp_path / "0", {"model.width": 8}, {"status": "ok", "val_acc": 0.5})
    left = fake_job(tmp_path / "1", {"model.width": 16}, None)  # refused before its run: Hydra's files alone
    (left / "train.log").write_text("")
    (left / ".lock").write_text("")
    assert len(report.main(tmp_path)) == 1  # the finished run alone, no "failed" row for the leftover
    assert (tmp_path / "report.csv").read_text().count("\n") == 2  # header + one row
    with pytest.raises(UserError, match="no runs under"):
        report.main(Path(left))
