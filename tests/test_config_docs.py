"""The configuration docs cannot drift from the schema: CONFIG.md is generated from it, and every key and
option the README's configuration section names is one the shipped configs have."""

from __future__ import annotations

import re
from pathlib import Path

from nas_cli import schema
from nas_cli.config_files import config_dir

ROOT = Path(__file__).resolve().parents[1]


def all_keys() -> set[str]:
    """Every key any shipped file declares, under the prefix it takes in a composed config."""
    keys = set()
    root = config_dir()
    for path in root.rglob("*.yaml"):
        rel = path.relative_to(root)
        if rel.parts[0] == "hydra":
            continue
        file = schema.read_file(path)
        prefix = "" if len(rel.parts) == 1 or file.package == "_global_" else rel.parts[0] + "."
        for dotted in file.rules:
            keys.add(prefix + dotted)
            keys.add(dotted)  # as named inside its group (`width` of `model=cnn`)
    return keys


def section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_config_md_is_the_schema_s_reference():
    assert (ROOT / "CONFIG.md").read_text() == schema.reference() + "\n", "run `make config-docs`"


def test_every_key_the_readme_configuration_section_names_exists():
    keys = all_keys()
    named = set()
    for token in re.findall(r"`([^`]+)`", section("Configuring a run")):
        key = token.split("=", 1)[0].strip()
        if re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key) and not key.endswith((".py", ".yaml", ".json", ".csv", ".pt")):
            named.add(key.removesuffix(".*"))
    missing = sorted(k for k in named if k not in keys and not any(o.startswith(k + ".") for o in keys))
    assert named and not missing, missing


def test_every_option_the_readme_group_table_names_exists():
    rows = re.findall(r"^\| `([a-z_]+)` \| (.*) \|$", section("Configuring a run"), flags=re.M)
    assert rows
    for group, cell in rows:
        options = {p.stem for p in (config_dir() / group).glob("*.yaml")}
        leading = re.findall(r"(?:^|\), |, )`([a-z0-9_]+)`", cell)  # the options the cell lists, keys in brackets
        assert options, group
        assert set(leading) <= options | {k.rsplit(".", 1)[-1] for k in all_keys()}, (group, leading)
