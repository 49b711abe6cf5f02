"""Every command's --options goes through safe_yaml_load: an alias bomb is one line, exit 2, found
before any file is read (the store commands parsed it with plain yaml.safe_load)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medxai.cli import _load_commands, app

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
) + "deletion: {steps: *i}\n"


def _commands_with_options() -> list[list[str]]:
    """Every (sub)command of the app that takes --options, as its argv prefix."""
    import typer.main

    _load_commands()
    found: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
        if any("--options" in getattr(p, "opts", ()) for p in getattr(cmd, "params", ())):
            found.append(path)

    walk(typer.main.get_command(app), [])
    return found


def test_the_commands_with_options_are_found():
    assert sorted(_commands_with_options()) == [["score"], ["store", "score"]]


REQUIRED = {("score",): ["--maps", "no-such-maps", "--out", "out"], ("store", "score"): ["--store", "no-such-store"]}


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_options_alias_bomb_is_one_line_error(tmp_path, command):
    argv = [*command, *REQUIRED[command], "--options", BOMB]
    proc = subprocess.run([sys.executable, "-m", "medxai", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--options" in lines[0] and "alias bomb" in lines[0]
    assert "Traceback" not in proc.stderr
