"""The `unimask` command line: every subcommand has --help; unimplemented ones say so."""

import subprocess
import sys

import pytest

from unimask.cli import NOT_IMPLEMENTED_EXIT, SUBCOMMANDS, _load_command, main


def test_top_level_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage: unimask " + name in capsys.readouterr().out


def test_unimplemented_subcommand_exits_nonzero_with_message(monkeypatch, capsys):
    monkeypatch.setitem(SUBCOMMANDS, "demo", ("unimask.no_such_module_for_test", "demo"))
    assert main(["demo"]) == NOT_IMPLEMENTED_EXIT
    assert "not implemented yet" in capsys.readouterr().err


def test_broken_import_inside_a_command_is_not_hidden(monkeypatch, tmp_path):
    """Only a missing command module means 'not implemented'; other import errors propagate."""
    (tmp_path / "cmd_with_bad_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(SUBCOMMANDS, "demo", ("cmd_with_bad_import", "demo"))
    with pytest.raises(ModuleNotFoundError):
        _load_command("demo")


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "unimask", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("unimask ")
