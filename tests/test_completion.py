"""Shell completion (Typer's): the script names the program, and completing a prefix yields command names."""

from __future__ import annotations

import os
import subprocess
import sys

from typer.testing import CliRunner

from nas_cli.cli import HYDRA_COMMANDS, app


def test_show_completion_prints_a_script_for_nas_cli(tmp_path):
    """In a process of its own, with Typer's switch that takes the shell from the command line instead of
    detecting the parent process's (under make or CI that is sh, which Typer does not complete)."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'nas-cli'; from nas_cli.cli import main; main()",
            "--show-completion",
            "bash",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(tmp_path), "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "complete -o default -F _nas_cli_completion nas-cli" in result.stdout
    assert "_NAS_CLI_COMPLETE=complete_bash" in result.stdout
    assert not any(tmp_path.iterdir())  # --show-completion prints; it installs nothing


def test_completion_completes_command_names():
    def complete(words: str) -> set[str]:
        env = {"_NAS_CLI_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split()) - 1)}
        result = CliRunner().invoke(app, [], prog_name="nas-cli", env=env)
        assert result.exit_code == 0
        return set(result.output.split())

    assert complete("nas-cli tr") == {"train"}
    assert complete("nas-cli se") == {n for n in HYDRA_COMMANDS if n.startswith("se")} == {"search-darts", "search-rl"}
    assert complete("nas-cli rep") == {"report"}
