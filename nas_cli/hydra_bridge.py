"""Run a Hydra task from Typer: pass every token through, report errors in one line.

Typer hands over the raw tokens (overrides, ``-m``, ``--cfg job``, ``--help``);
``hydra.main`` parses ``sys.argv`` itself, so argv is swapped around the call.
Hydra is asked to raise instead of printing (``HYDRA_FULL_ERROR=1`` inside this
process) so that every failure, Hydra's or ours, becomes one line and an exit code.
Set ``HYDRA_FULL_ERROR=1`` yourself to see the full traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import os
import shutil
import sys
import textwrap
from collections.abc import Callable
from contextlib import contextmanager

from rich.console import Console
from rich.text import Text

from nas_cli.config_files import config_dir
from nas_cli.errors import UserError

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT; SIGTERM gives 143
HELP = ("--help", "-h")

_NOISE = ("full_key:", "object_type=", "reference_type=", "provider=")
_STOP = "Config search path"  # Hydra appends its search path: never what the user needs


@contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


class _DropHydraJobError:
    """stderr that drops Hydra's 'Error executing job with overrides' line: the error line says it all."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return 0 if text.startswith("Error executing job with overrides") else self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextmanager
def _quiet_single_run_errors(args: list[str]):
    multirun = any(a in ("-m", "--multirun") for a in args)  # there the line tells which job failed
    saved = sys.stderr
    if not multirun:
        sys.stderr = _DropHydraJobError(saved)
    try:
        yield
    finally:
        sys.stderr = saved


@contextmanager
def _hydra_raises():
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def one_line(ex: BaseException) -> str:
    """Condense an exception (and what caused it) into one readable line."""
    from omegaconf.errors import MissingMandatoryValue

    chain: list[BaseException] = []
    cur: BaseException | None = ex
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, UserError):  # our own message says it best
            return str(e)
        if isinstance(e, MissingMandatoryValue) and getattr(e, "full_key", None):
            return f"{e.full_key} has no default and must be given: add {e.full_key}=..."
    parts: list[str] = []
    for e in chain[:2]:
        lines = [ln.strip() for ln in (str(e) or type(e).__name__).splitlines()]
        if lines and lines[0].startswith("Error in call to target"):
            # Hydra's wrapper around a constructor's error: keep where, then the cause below
            where = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), "")
            parts.append(f"bad value in {where or lines[0].split(' ')[-1].strip(':')}")
            continue
        kept: list[str] = []
        for ln in lines:
            if ln.startswith(_STOP):
                break
            if ln and not ln.startswith(_NOISE):
                kept.append(ln)
        joined = " ".join(_options_joined(kept))
        if joined and joined not in parts:
            parts.append(joined)
    return ": ".join(parts) if parts else type(ex).__name__


def _options_joined(lines: list[str]) -> list[str]:
    """Hydra lists 'Available options in X:' one per line; fold them into one phrase."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("Available options"):
            opts = []
            j = i + 1
            while j < len(lines) and " " not in lines[j]:
                opts.append(lines[j])
                j += 1
            out.append(f"({lines[i]} {', '.join(opts)})")
            i = j
        else:
            out.append(lines[i])
            i += 1
    return out


@contextmanager
def exit_on_error(command: str):
    """Turn any failure into one line on stderr and a non-zero exit (a traceback only on request).

    An interrupted run (SIGINT, SIGTERM) exits with 128 + the signal's number and says how to resume.
    """
    from nas_cli.runs.signals import Interrupted

    console = Console(stderr=True, highlight=False)
    user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    if (launch := _launch()) is not None:
        launch.resume_command = None  # the folder this command line takes sets it
    try:
        yield
    except Exception as ex:
        stopped = _stopped_job(ex)
        if stopped is None:
            if user_wants_traceback:
                raise
            console.print(Text.assemble(("error", "bold red"), f": {one_line(ex)}"), soft_wrap=True)
            sys.exit(EXIT_USER_ERROR if _is_user_error(ex) else EXIT_FAILURE)
        _interrupted(console, command, stopped.exit_code, stopped.name, getattr(_launch(), "resume_command", None))
    except KeyboardInterrupt as ex:
        code, how = EXIT_INTERRUPTED, "SIGINT"
        if isinstance(ex, Interrupted):
            code, how = ex.exit_code, (f"a second {ex.name}: from the last checkpoint" if ex.hard else ex.name)
        where = getattr(ex, "run_dir", None) or "true"
        resume = getattr(_launch(), "resume_command", None)
        _interrupted(console, command, code, how, resume or f"nas-cli {command} resume={where}")


def _launch():
    """``nas_cli.runs.launch`` once this process has chosen a run folder, else None (importing it loads torch,
    which --help and a refused command line never need)."""
    return sys.modules.get("nas_cli.runs.launch")


def _interrupted(console: Console, command: str, code: int, how: str, resume: str | None) -> None:
    console.print(Text.assemble(("interrupted", "yellow"), f" ({how}): continue with `{resume}`"), soft_wrap=True)
    sys.exit(code)


def _stopped_job(ex: BaseException):
    """The ``JobStopped`` behind a sweep's failure (a job in a worker process was interrupted), or None."""
    from nas_cli.runs.signals import JobStopped

    cur: BaseException | None = ex
    while cur is not None:
        if isinstance(cur, JobStopped):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def run(command: str, task: Callable | str, config_name: str, args: list[str]) -> None:
    """Run ``task`` under Hydra with the user's tokens; exit non-zero on any error.

    ``task`` is the task function, or the name of the module that holds it (``nas_cli.commands.train``),
    imported only once the command line is accepted: ``--help`` and a refused line never load torch.
    SIGINT and SIGTERM only ask the run to stop from here on (``nas_cli.runs.signals``).
    """
    from nas_cli.runs import signals

    with exit_on_error(command), signals.handled():
        _refuse_foreign_options(command, args)
        if any(a in HELP for a in args):
            print(command_help(config_name, [a for a in args if a not in HELP]))
            return
        import hydra

        from nas_cli.config_check import check_command_line
        from nas_cli.runs.resume import resolve_resume

        args = _for_this_process(resolve_resume(config_name, args))  # run folders are named after the config
        check_command_line(command, config_name, args, unknown_option)  # the schema: before any folder, log or torch
        fn: Callable = importlib.import_module(task).task if isinstance(task, str) else task
        main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(fn)
        with _folder(command, config_name, args) as args:
            with _argv([f"nas-cli {command}", *args]), _hydra_raises(), _quiet_single_run_errors(args):
                main()
        from nas_cli.runs.tracking import upload_late_artifacts

        upload_late_artifacts()  # plots a command drew after its run ended (dqn's returns.png), to its tracker


@contextmanager
def _folder(command: str, config_name: str, args: list[str]):
    """The run's folder, chosen and locked before Hydra writes into it (rank 0 of torchrun only)."""
    from nas_cli.runs import folders, launch
    from nas_cli.runs.rank import launched_rank

    if launched_rank() != 0:
        yield args
        return
    try:
        with launch.run_folder(command, config_name, args) as args:
            yield args
    finally:
        folders.release_all()


def command_help(config_name: str, overrides: list[str]) -> str:
    """A command's ``--help``: its header, the config groups it composes with the options it takes, every key
    of the composed config as a table (rule, default, help: the shipped YAML's, read through ``nas_cli.schema``)
    and its footer (examples). Composes the config with Hydra; imports neither torch nor the command."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from nas_cli import schema
    from nas_cli.config_values import as_dict

    overrides = [o for o in overrides if not o.startswith("-")]
    command = config_name.replace("_", "-")  # primary configs are named after their commands
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    choices = as_dict(cfg.hydra.runtime.choices, resolve=False)
    header, footer = cfg.hydra.help.header, cfg.hydra.help.footer
    config = as_dict(cfg, resolve=False)  # interpolations as written: ${...}, ??? for a must-give
    config.pop("hydra", None)
    followers = _following_groups(config_name)
    listing, chosen = [], []
    for group in sorted(g for g in choices if not g.startswith("hydra/") and g not in followers):
        if options := _options(group, command):
            listing.append(f"{group}: {', '.join(options)}")
            if choices[group] is not None:
                chosen.append(f"{group}={choices[group]}")
    width = max(60, min(shutil.get_terminal_size((100, 24)).columns, 120))
    intro = "Compose your configuration from those groups (group=option)" + (
        f"; the config below is {' '.join(chosen)}" if chosen else ""
    )
    groups = (
        ["== Configuration groups ==", *textwrap.wrap(intro, width, break_on_hyphens=False), "", *listing, ""]
        if listing
        else []
    )
    table = _config_table(list(_config_rows(config, schema.rules_for(config_name, choices))), width)
    return "\n".join(
        [
            header.rstrip(),
            "",
            *groups,
            "== Config ==",
            "Override any key (key=value): what it takes, its default here and what it does",
            "",
            *table,
            "",
            footer.rstrip(),
        ]
    )


def _following_groups(config_name: str) -> set[str]:
    """The groups a primary config picks by interpolation (``optional dqn_env: ${env}``): they follow another
    group's choice and are no choice of their own."""
    return {
        group for group, option in _default_groups(config_name).items() if isinstance(option, str) and "${" in option
    }


def _default_groups(config_name: str) -> dict[str, object]:
    """Group -> option of the primary config's defaults list (``optional``/``override`` words dropped)."""
    import yaml

    path = config_dir() / f"{config_name}.yaml"
    data = yaml.safe_load(path.read_text()) if path.is_file() else None
    found: dict[str, object] = {}
    for entry in (data or {}).get("defaults", []) if isinstance(data, dict) else []:
        if isinstance(entry, dict):
            for key, option in entry.items():
                found[key.split()[-1].split("@")[0].lstrip("/")] = option
    return found


def _config_rows(node: dict, rules: dict, prefix: str = ""):
    """``(key, default, rule)`` of every key below ``node``, in the config's order. A mapping is a node whose
    keys are listed (after a row of its own when it has a rule: ``depth_schedule: {dict | null}``), unless it
    has a rule and none of its keys has one; Hydra's ``_target_``-like keys are no settings."""
    from nas_cli import schema

    for key, value in node.items():
        if key in schema.HYDRA_KEYS:
            continue
        dotted = f"{prefix}{key}"
        rule = rules.get(dotted)
        if isinstance(value, dict) and value and (rule is None or any(k.startswith(f"{dotted}.") for k in rules)):
            if rule is not None:
                yield dotted, _NODE, rule
            yield from _config_rows(value, rules, f"{dotted}.")
            continue
        yield dotted, value, rule or schema.Rule(schema.inferred(value))


_NODE = object()  # the default of a mapping whose keys have rows of their own


def _config_table(rows: list, width: int) -> list[str]:
    """Rows as text columns: key, default, then the rule and the help wrapped in what is left of ``width``.
    A key or default too long for its column pushes the rest of its row to the next line."""
    key_w = min(max([len(k) for k, _, _ in rows] + [3]), 26)
    shown = [_shown(v) for _, v, _ in rows]
    default_w = min(max([len(s) for s in shown] + [7]), 14)
    text_at = key_w + 2 + default_w + 2
    text_w = max(width - text_at, 30)
    out = [
        f"{'key':<{key_w}}  {'default':<{default_w}}  rule — help",
        f"{'-' * key_w}  {'-' * default_w}  {'-' * min(text_w, 40)}",
    ]
    section = None
    for (key, _, rule), default in zip(rows, shown):
        top = key.split(".", 1)[0] if "." in key else ""
        if section is not None and top != section:
            out.append("")
        section = top
        line = key
        if len(line) > key_w:
            out.append(line)
            line = ""
        line = line.ljust(key_w + 2)
        room = width - len(line)
        default = default if len(default) <= room else default[: room - 3] + "..."
        line += default
        if len(default) > default_w:
            out.append(line)
            line = ""
        text = (
            ("no default, must be given: " if default == "???" else "")
            + rule.describe()
            + (f" — {rule.help}" if rule.help else "")
        )
        wrapped = textwrap.wrap(text, text_w, break_on_hyphens=False) or [""]
        out.append((line.ljust(text_at) + wrapped[0]).rstrip())
        out.extend(" " * text_at + more for more in wrapped[1:])
    return out


def _shown(value) -> str:
    """A default as one would write it on the command line (YAML: null, true, [64, 64])."""
    import yaml

    if value is _NODE:
        return "{...}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True).strip()
    return str(value) if value != "" else "''"


def _options(group: str, command: str) -> list[str]:
    """The options of ``group`` (``conf/GROUP/*.yaml``) that ``command`` takes."""
    folder = config_dir() / group
    names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    return [o for o in names if belongs(group, o, command)]


def option_commands(group: str, name: str) -> list[str] | None:
    """The commands an option (``conf/GROUP/NAME.yaml``) is for: its ``# command: A[, B ...]`` line among the
    leading comments; None when it has none (an option every command that composes the group can take)."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# command:"):
            return [c.strip() for c in line.split(":", 1)[1].split(",") if c.strip()]
    return None


def belongs(group: str, name: str, command: str) -> bool:
    owners = option_commands(group, name)
    return owners is None or command in owners


def preset_command(name: str) -> str | None:
    """The command a preset (``conf/experiment/NAME.yaml``) belongs to (a preset names exactly one)."""
    owners = option_commands("experiment", name)
    return owners[0] if owners else None


def unknown_option(command: str, group: str, option: str) -> str | None:
    """One line for ``group=option`` when ``command`` cannot take that option, else None.

    It lists only the options this command has, the closest first as "did you mean" (``detect model=nope``
    offers detect's models, not train's); an option of another command names that command. None too where
    this is not ours to judge: a group the command does not compose (Hydra says how to add one), Hydra's own
    groups, ``null``, and sweep functions (``choice(...)``, ``glob(...)``).
    """
    group = group.lstrip("+")
    option = option.strip()
    config_name = command.replace("-", "_")
    if (
        group.startswith("hydra")
        or not (config_dir() / group).is_dir()
        or group not in _default_groups(config_name)
        or option in ("", "null", "None")
        or any(c in option for c in "$()*{}[]'\"")
    ):
        return None
    options = _options(group, command)
    if option in options:
        return None
    owners = option_commands(group, option)
    if owners is not None:  # the file is there, tagged for other commands
        what = "a preset" if group == "experiment" else "an option"
        here = (
            f"; nas-cli {command}'s {group} options: {', '.join(options)}"
            if options
            else f"; nas-cli {command} has no {group} options"
        )
        return (
            f"{group}={option} is {what} of `nas-cli {' / '.join(owners)}`: run "
            f"`nas-cli {owners[0]} {group}={option}`{here}"
        )
    close = difflib.get_close_matches(option, options, n=3, cutoff=0.6)
    rest = [o for o in options if o not in close]
    head = f"{group}={option}: nas-cli {command} has no such {group} option"
    if not options:
        return f"{head} (it has none)"
    if not close:
        return f"{head}; its {group} options: {', '.join(options)}"
    guess = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f"{head}; did you mean {guess}?" + (f" (its other {group} options: {', '.join(rest)})" if rest else "")


def _refuse_foreign_options(command: str, args: list[str]) -> None:
    """``experiment=dqn_atari`` on train, ``data=shapes`` (boxes) on train, or ``model=nope`` on detect would fail
    deep inside Hydra or the model, or list every command's options: say in one line what this command takes."""
    for arg in args:
        key, _, value = arg.partition("=")
        group = key.lstrip("+")
        if not value or "." in group or "@" in group or not (config_dir() / group).is_dir():
            continue
        for name in value.split(","):  # a sweep over options
            if (line := unknown_option(command, group, name)) is not None:
                raise UserError(line)


def _for_this_process(args: list[str]) -> list[str]:
    """Under torchrun, processes other than rank 0 get no run folder, log file or config dump of their own."""
    from nas_cli.runs.rank import launched_rank

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(a in ("-m", "--multirun") for a in args):
        raise UserError("torchrun runs one job on several processes: sweep with -m outside torchrun")
    if launched_rank() == 0:
        return args
    return [
        *args,
        "hydra.output_subdir=null",
        "hydra/job_logging=disabled",
        "hydra/hydra_logging=disabled",
        "hydra.run.dir=.",
    ]


def _is_user_error(ex: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    cur: BaseException | None = ex
    while cur is not None:
        if isinstance(cur, (UserError, HydraException, OmegaConfBaseException)):
            return True
        cur = cur.__cause__
    return False
