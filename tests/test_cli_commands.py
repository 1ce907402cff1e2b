"""The CLI's run / compile / inspect commands and their errors (tiny backend; no weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmqc.cli import main

QUERY = '''argmax
    "Q: {name}? [X]"
from "lmqc:tiny"
where X in ["yes", "no"]
'''


@pytest.fixture()
def qfile(tmp_path: Path) -> Path:
    p = tmp_path / "q.lmql"
    p.write_text(QUERY)
    return p


def test_run_json_prints_one_object_per_result(qfile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(qfile), "--input", "name=Bob", "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 1 and set(out[0]) == {"prompt", "variables", "distribution"}
    assert out[0]["variables"]["X"] in {"yes", "no"}
    assert main(["run", str(qfile), "--input", "name=Bob", "--json", "--decoder", "sample(n=2, seed=1)"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_compile_then_inspect_then_run_artifact(qfile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "q.lmqc"
    assert main(["compile", str(qfile), "-o", str(out)]) == 0
    assert out.exists()
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["holes"]["X"]["states"] > 1 and info["holes"]["X"]["masks"] >= 1
    assert main(["inspect", str(out)]) == 0
    assert "hole X:" in capsys.readouterr().out
    assert main(["run", str(out), "--input", "name=Ann", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt"].startswith("Q: Ann? ")


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return cap.err


def test_errors_are_reported_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.lmql"
    bad.write_text('argmax\n    "A: [X]"\nfrom "lmqc:tiny"\nwhere REGEX(X, r"(?=a)a")\n')
    assert main(["check", str(bad)]) == 1
    err = _err(capsys)
    assert f"{bad}:4:7:" in err and "lookahead" in err and "^" in err
    empty = tmp_path / "empty.lmql"
    empty.write_text('argmax\n    "A: [X]"\nfrom "lmqc:tiny"\nwhere len(X) < 2 and len(X) > 4\n')
    assert main(["compile", str(empty)]) == 1
    assert "can never be satisfied" in _err(capsys)
    remote = tmp_path / "remote.lmql"
    remote.write_text('argmax\n    "A: [X]"\nfrom "openai/text-davinci-003"\n')
    assert main(["run", str(remote)]) == 1
    assert "--model" in _err(capsys)
    assert main(["run", str(remote), "--model", str(tmp_path / "missing.gguf")]) == 1
    assert "not found" in _err(capsys)
    assert main(["inspect", str(remote)]) == 1
    assert "artifact" in _err(capsys)
    assert main(["run", str(empty), "--decoder", "beam(n=0)"]) == 1
    _err(capsys)
    assert main(["run", str(tmp_path / "nope.lmql")]) == 1
    assert "no such file" in _err(capsys)
