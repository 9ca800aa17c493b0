"""The typed schema of every command's config, read from the shipped YAML that defines it.

Each key of a config is written once, on its own line of one YAML file, and that line is its whole
schema: the value is the default, an optional rule in braces opens the comment, and the rest
of the comment is its help::

    epochs: 8            # {int ≥ 1} passes over the training data
    precision: fp32      # {fp32 | bf16 | fp16} bf16: autocast; fp16: autocast + loss scaling
    grad_clip: null      # {float > 0 | null} clip the global gradient norm (null: off)
    hidden: [256, 256]   # {list[int ≥ 1]} units of each hidden layer

A rule is ``|``-separated alternatives: a type (``int``, ``float``, ``bool``, ``str``, ``list``, ``dict``,
``any``; ``list[RULE]`` checks each item) with an optional bound (``≥ 1``, ``> 0``, ``≤ 1``, ``< 1``, or an
interval ``in [0, 1)``), ``null``, or a literal word (a choice; ``cuda:N`` stands for ``cuda:0``, ``cuda:1``,
...). A key without a rule takes the type of
its default (an int default makes it a whole number, a float default a number, and so on; a null default
also allows null). ``# command: ...`` lines and the ``defaults``/``hydra`` sections are not keys.

Which files speak for a composed config follows Hydra's own composition: the command's primary file at
the top level, each group's chosen option under its package (``data.``, ``model.``, ...; ``@package
_global_`` files at the top level). A rule in the group's option file wins over the primary file's, which
only sets values there.

Nothing here imports torch: a command line is checked, and ``--help`` printed, before the heavy imports.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from nas_cli.config_files import config_dir

TYPES = ("int", "float", "bool", "str", "list", "dict", "any")
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*)\s*:(?P<value>[^#]*?)\s*(?:#\s?(?P<comment>.*))?$")
_COMMENT_LINE = re.compile(r"^(?P<indent> *)#\s?(?P<comment>.*)$")
_BOUND = re.compile(r"^(?P<op>≥|>=|>|≤|<=|<)\s*(?P<num>[-+\d.eE]+|inf)$")
_INTERVAL = re.compile(r"^in\s*(?P<lo>[\[(])\s*(?P<a>[-+\d.eE]+|-inf)\s*,\s*(?P<b>[-+\d.eE]+|inf)\s*(?P<hi>[\])])$")


@dataclass(frozen=True)
class Alternative:
    """One way a value may be: a type (with bounds, or an item rule for lists), null, or a literal choice."""

    kind: str  # a TYPES entry, "null" or "literal"
    literal: str | None = None
    low: float = -math.inf
    low_open: bool = False
    high: float = math.inf
    high_open: bool = False
    item: Rule | None = None

    def accepts(self, value: Any) -> bool:
        if self.kind == "null":
            return value is None
        if self.kind == "literal":
            assert self.literal is not None  # parse_rule always gives a literal alternative its word
            if ":N" in self.literal:  # cuda:N: any whole number in N's place
                return (
                    isinstance(value, str)
                    and re.fullmatch(re.escape(self.literal).replace("N", r"\d+"), value) is not None
                )
            return isinstance(value, str) and value == self.literal or str(value) == self.literal
        if self.kind == "any":
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            if self.kind == "int" and not isinstance(value, int):
                return False
            if isinstance(value, float) and not math.isfinite(value):
                return False
            return self._within(float(value))
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "list":
            return isinstance(value, (list, tuple)) and (self.item is None or all(self.item.accepts(v) for v in value))
        if self.kind == "dict":
            return isinstance(value, Mapping)
        return False

    def _within(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def describe(self) -> str:
        if self.kind == "null":
            return "null"
        if self.kind == "literal":
            return str(self.literal)
        if self.kind == "list":
            if self.item is not None and self.item.kinds == {"literal"}:
                return "a list drawn from " + ", ".join(str(a.literal) for a in self.item.alternatives)
            return "a list" + (f" of {self.item.describe(plural=True)}" if self.item else "")
        words = {
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false",
            "str": "a string",
            "dict": "a mapping",
            "any": "any value",
        }[self.kind]
        return words + self._bounds()

    def _bounds(self) -> str:
        lo, hi = self.low, self.high
        if lo == -math.inf and hi == math.inf:
            return ""
        if hi == math.inf:
            return f" {'>' if self.low_open else '≥'} {_num(lo)}"
        if lo == -math.inf:
            return f" {'<' if self.high_open else '≤'} {_num(hi)}"
        return f" in {'(' if self.low_open else '['}{_num(lo)}, {_num(hi)}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Rule:
    """What values a key takes, its default and its help, and the file that says so."""

    alternatives: tuple[Alternative, ...]
    default: Any = None
    help: str = ""
    source: str = ""
    written: bool = False  # the rule is written in the file (not inferred from the default)

    def accepts(self, value: Any) -> bool:
        return any(a.accepts(value) for a in self.alternatives)

    def describe(self, plural: bool = False) -> str:
        text = _either([a.describe() for a in self.alternatives])
        if plural:
            text = (
                text.replace("a whole number", "whole numbers")
                .replace("a number", "numbers")
                .replace("a string", "strings")
            )
        return text

    @property
    def kinds(self) -> set[str]:
        return {a.kind for a in self.alternatives}


def _either(parts: list[str]) -> str:
    literals = [p for p in parts if p not in ("null",) and " " not in p]
    if len(parts) > 2 and len(literals) == len(parts):
        return "one of " + ", ".join(parts)
    return " or ".join(parts)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


# -- reading a file ----------------------------------------------------------------------------------------


def parse_rule(text: str) -> tuple[Alternative, ...]:
    """The alternatives of a rule's text (without its braces)."""
    alternatives = []
    for part in _split_top(text, "|"):
        part = part.strip()
        if not part:
            raise ValueError(f"empty alternative in {{{text}}}")
        alternatives.append(_alternative(part))
    return tuple(alternatives)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside brackets (``list[int | null] | null`` has two parts)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def _alternative(part: str) -> Alternative:
    if part == "null":
        return Alternative("null")
    if part.startswith("list[") and part.endswith("]"):
        return Alternative("list", item=Rule(parse_rule(part[5:-1])))
    head, _, rest = part.partition(" ")
    if head not in TYPES:
        return Alternative("literal", literal=part)
    rest = rest.strip()
    if not rest:
        return Alternative(head)
    if head not in ("int", "float"):
        raise ValueError(f"a bound on {head}: {{{part}}}")
    if m := _INTERVAL.match(rest):
        return Alternative(
            head, low=float(m["a"]), low_open=m["lo"] == "(", high=float(m["b"]), high_open=m["hi"] == ")"
        )
    if m := _BOUND.match(rest):
        x, op = float(m["num"]), m["op"]
        if op in ("≥", ">=", ">"):
            return Alternative(head, low=x, low_open=op == ">")
        return Alternative(head, high=x, high_open=op == "<")
    raise ValueError(f"cannot read the bound '{rest}' in {{{part}}}")


def inferred(default: Any) -> tuple[Alternative, ...]:
    """The rule a key without one gets from its default."""
    if default is None:
        return (Alternative("any"),)
    if isinstance(default, bool):
        return (Alternative("bool"),)
    if isinstance(default, int):
        return (Alternative("int"),)
    if isinstance(default, float):
        return (Alternative("float"),)
    if isinstance(default, str):
        return (Alternative("any"),) if "${" in default else (Alternative("str"),)
    if isinstance(default, list):
        return (Alternative("list"),)
    if isinstance(default, dict):
        return (Alternative("dict"),)
    return (Alternative("any"),)


@dataclass
class FileSchema:
    """The keys one YAML file declares, by dotted key under the file's own package."""

    path: Path
    package: str | None  # "_global_", "hydra" or None (the group's own)
    rules: dict[str, Rule] = field(default_factory=dict)


@cache
def read_file(path: Path) -> FileSchema:
    text = path.read_text()
    package = None
    for line in text.splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
    values = yaml.safe_load(text) or {}
    schema = FileSchema(path, package)
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings
    last: str | None = None  # the last key line, whose help a comment line below it continues
    for line in text.splitlines():
        if not line.strip():
            continue
        if (m := _COMMENT_LINE.match(line)) is not None:
            if not m["indent"]:  # a comment of its own, not the continuation of the key line above
                last = None
            elif last is not None and last in schema.rules:
                rule = schema.rules[last]
                schema.rules[last] = Rule(
                    rule.alternatives, rule.default, f"{rule.help} {m['comment'].strip()}", rule.source, rule.written
                )
            continue
        m = _KEY_LINE.match(line)
        if m is None:
            last = None
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [m["key"]])
        stack.append((indent, m["key"]))
        top = dotted.split(".", 1)[0]
        if top in ("defaults", "hydra") or m["key"] in HYDRA_KEYS:
            last = None
            continue
        default = _select(values, dotted)
        comment = (m["comment"] or "").strip()
        written = comment.startswith("{")
        if written:
            end = _closing(comment)
            rule_text, comment = comment[1:end], comment[end + 1 :].strip()
            try:
                alternatives = parse_rule(rule_text)
            except ValueError as ex:
                raise ValueError(f"{path}: {dotted}: {ex}") from None
        else:
            alternatives = inferred(default)
        schema.rules[dotted] = Rule(alternatives, default, comment, str(path), written)
        last = dotted
    # a mapping with keys of its own is a node, not a value: only its leaves are keys
    for dotted in [d for d in schema.rules if any(o.startswith(d + ".") for o in schema.rules)]:
        if not schema.rules[dotted].written:
            del schema.rules[dotted]
    return schema


def _closing(comment: str) -> int:
    end = comment.find("}")
    if end < 0:
        raise ValueError(f"a rule that does not close: {comment}")
    return end


def _select(values: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return None
        values = values[part]
    return values


# -- a composed config -------------------------------------------------------------------------------------


def files_of(config_name: str, choices: Mapping[str, str | None]) -> list[tuple[str, Path]]:
    """``(prefix, file)`` of every shipped file that speaks for a config composed from ``config_name`` with
    these group ``choices``, group options before the primary file (their rules win)."""
    root = config_dir()
    found = []
    for group, option in choices.items():
        if option is None or group.startswith("hydra"):
            continue
        path = root / group / f"{option}.yaml"
        if not path.is_file():
            continue
        package = read_file(path).package
        prefix = "" if package == "_global_" else (package or group.replace("/", ".")) + "."
        found.append((prefix, path))
    found.append(("", root / f"{config_name}.yaml"))
    return found


def rules_for(config_name: str, choices: Mapping[str, str | None]) -> dict[str, Rule]:
    """Every key of the composed config and its rule (a written rule wins over one inferred from a default)."""
    rules: dict[str, Rule] = {}
    for prefix, path in files_of(config_name, choices):
        for dotted, rule in read_file(path).rules.items():
            key = prefix + dotted
            if key not in rules or (rule.written and not rules[key].written):
                rules[key] = rule
    return rules


@dataclass(frozen=True)
class Violation:
    key: str
    value: Any
    rule: Rule | None  # None: no such key

    def line(self) -> str:
        if self.rule is None:
            return f"{self.key}: no such key"
        return f"{self.key}={_shown(self.value)}: expected {self.rule.describe()}"


def violations(config: Mapping, rules: Mapping[str, Rule]) -> list[Violation]:
    """What in a composed, resolved config (plain containers) breaks its rules, or names no key."""
    found: list[Violation] = []
    _walk(config, "", rules, found)
    return found


def _walk(node: Mapping, prefix: str, rules: Mapping[str, Rule], found: list[Violation]) -> None:
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        dotted = f"{prefix}{key}"
        rule = rules.get(dotted)
        if rule is not None:
            if not rule.accepts(value):
                found.append(Violation(dotted, value, rule))
        elif isinstance(value, Mapping):
            _walk(value, f"{dotted}.", rules, found)
        else:
            found.append(Violation(dotted, value, None))


def closest(key: str, keys: list[str], n: int = 3) -> list[str]:
    """The keys most like ``key``: whole dotted keys first, then by the last part under the same parent."""
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    if not close:
        last = key.rsplit(".", 1)[-1]
        close = [
            k
            for k in keys
            if k.rsplit(".", 1)[-1]
            in difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in keys], n=n, cutoff=0.75)
        ][:n]
    return close


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    text = (
        str(value)
        if not isinstance(value, (list, tuple, dict))
        else yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    )
    return text if len(text) <= 60 else text[:57] + "..."


# -- the reference -----------------------------------------------------------------------------------------


def reference() -> str:
    """Every key of every shipped config as Markdown tables (CONFIG.md): key, rule, default, help."""
    root = config_dir()
    out = [
        "# Configuration reference",
        "",
        "Every key of every shipped config, from the YAML files themselves (`nas_cli/schema.py` reads the",
        "same lines to check a command line). Regenerate with `make config-docs`; a test keeps it current.",
        "",
    ]
    primaries = sorted(p for p in root.glob("*.yaml"))
    groups = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    for path in [*primaries, *(f for g in groups for f in sorted(g.glob("*.yaml")))]:
        file = read_file(path)
        if not file.rules:
            continue
        rel = path.relative_to(root).with_suffix("")
        where = rel.as_posix() if rel.parent == Path(".") else f"{rel.parent.as_posix()}={rel.name}"
        prefix = "" if file.package == "_global_" or rel.parent == Path(".") else f"{rel.parent.as_posix()}."
        owners = _owners(path)
        out += [
            f"## `{where}`" + (f" ({', '.join(owners)})" if owners else ""),
            "",
            "| key | takes | default | what it is |",
            "|---|---|---|---|",
        ]
        for dotted, rule in file.rules.items():
            out.append(
                f"| `{prefix}{dotted}` | {_cell(rule.describe())} | `{_cell(_shown(rule.default))}` | "
                f"{_cell(rule.help)} |"
            )
        out.append("")
    return "\n".join(out)


def _owners(path: Path) -> list[str]:
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# command:"):
            return [c.strip() for c in line.split(":", 1)[1].split(",") if c.strip()]
    return []


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    print(reference())
