"""The ``cnnbench report`` command (:mod:`cnnbench.report.command`): no runs is one error line (exit 2), and it
never imports torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cnnbench
from cnnbench.cli import main


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_no_runs_is_one_error_line_exit_code_2(tmp_path: Path, make: str, capsys: pytest.CaptureFixture) -> None:
    """Printed like every command's errors ('cnnbench eval: error: ...'), not as a time-stamped log line."""
    target = tmp_path / "nowhere"
    if make == "empty":
        (target / "sub").mkdir(parents=True)
    assert main(["report", str(target)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"cnnbench report: error: {'no run folders' if make == 'empty' else target}")
    assert not (tmp_path / "nowhere" / "report.md").exists()


def test_report_never_imports_torch() -> None:
    # A fresh interpreter: in this one, other tests may have imported torch already. Run from the folder
    # holding the cnnbench under test, which `-c` puts first on sys.path.
    code = "import sys, cnnbench.report, cnnbench.report.plots; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(cnnbench.__file__).parents[1])
    assert result.returncode == 0, result.stderr
