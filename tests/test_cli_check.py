"""`lmqc check`: printed form, JSON, rendered errors on stderr, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lmqc.cli import main

SEED = Path(__file__).parent.parent / "examples" / "seed.lmql"


def test_check_prints_formatted_query(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SEED)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("decoder: beam(n=3)\nmodel: \"gemma-3-270m\"\n")
    assert "    RESPONSE: len(TOKENS(RESPONSE)) < 20" in out


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SEED), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["holes"] == ["RESPONSE"] and data["inputs"] == ["name"]
    assert data["decoder"] == {"name": "beam", "args": {"n": 3}}


def test_check_error_is_rendered_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.lmql"
    bad.write_text('argmax\n    "A: [RESPONSE]"\nwhere len(RESPONS) < 10\n', encoding="utf-8")
    assert main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"{bad}:3:11: unknown variable 'RESPONS' in where clause; did you mean 'RESPONSE'?\n"
        "    where len(RESPONS) < 10\n"
        "              ^\n"
    )


def test_check_syntax_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "syntax.lmql"
    bad.write_text('"A: [X"\n', encoding="utf-8")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{bad}:1:7: expected ']'")
    assert "Traceback" not in err


@pytest.mark.parametrize("make", ["missing", "directory", "binary"])
def test_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], make: str) -> None:
    path = tmp_path / "q.lmql"
    if make == "directory":
        path.mkdir()
    elif make == "binary":
        path.write_bytes(b"\xff\xfe\x00junk")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lmqc: error: {path}: ")
    assert err.count("\n") == 1


def test_usage_errors_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["check"])


def test_console_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from lmqc.cli import main; sys.exit(main())", "check", str(SEED)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "holes: RESPONSE" in proc.stdout


@pytest.mark.filterwarnings("default::lmqc.errors.SchemaApproximationWarning")
def test_check_prints_schema_approximations_as_one_line_warnings(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from lmqc.compiler import jsonschema

    jsonschema._compile_cached.cache_clear()
    q = tmp_path / "typed.lmql"
    q.write_text('"A: [X]" where JSON(X, {"type": "string", "format": "x-cli-note"})\n', encoding="utf-8")
    assert main(["check", str(q)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("lmqc: warning: JSON schema compiled with approximations: ") and "x-cli-note" in err
    assert err.count("\n") == 1  # no Python source excerpt
