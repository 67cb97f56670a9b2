"""A terminal that goes away (`deps-orch ... | head`) ends our echo, never the command or the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO


def _with_a_closed_stdout(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with standard output a pipe nobody reads: its read end is closed before the child starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(command, cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


def test_a_run_console_whose_reader_went_keeps_the_run_going_and_its_log(tmp_path: Path):
    done = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from orchestrator.console import QuietConsole
        from workers.rundir.layout import RunDir

        files = RunDir(Path({str(tmp_path / "run")!r})).create()
        with QuietConsole(files) as console:
            console.echo("[run] one of our lines")
            print("a library's line", flush=True)
            console.echo("[run] and another")
            console.error("deps-orch: error: shown nowhere, and no failure")
        files.append_log("[run] finished")
        print("printed after the console")
        Path({str(done)!r}).write_text("the run went on")
        """
    )
    result = _with_a_closed_stdout([sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert done.read_text() == "the run went on"
    log = (tmp_path / "run" / "run.log").read_text()
    assert "[library] a library's line" in log and "[run] finished" in log


def test_a_report_piped_into_a_reader_that_went_exits_quietly(tmp_path: Path):
    exe = Path(sys.executable).with_name("deps-orch")
    result = _with_a_closed_stdout([str(exe), "status", "--root", str(tmp_path)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
