"""A run's console: our own lines on the terminal, everything else the process prints in the run's log.

While a run executes, file descriptors 1 and 2 of this process (and of what it
starts) lead into a pipe. What arrives there — library warnings, Ray's log lines
from its core worker and from the workers it forwards — is appended to the run's
`run.log`, marked `[library]`, and with `--verbose` also shown on the terminal.
Our own lines go to the terminal through `echo` and `error`.
"""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType
from typing import TextIO

from workers.rundir.layout import RunDir


class QuietConsole:
    def __init__(self, target: RunDir | None = None, verbose: bool = False) -> None:
        self.target = target  # whose run.log receives library lines now (None: nowhere)
        self.verbose = verbose
        self._out: TextIO | None = None
        self._err: TextIO | None = None
        self._pump: threading.Thread | None = None

    def echo(self, line: str) -> None:
        """One of our lines, on the terminal's standard output."""
        print(line, file=self._out or sys.stdout, flush=True)

    def error(self, line: str) -> None:
        """One of our errors, on the terminal's standard error."""
        print(line, file=self._err or sys.stderr, flush=True)

    def __enter__(self) -> QuietConsole:
        sys.stdout.flush()
        sys.stderr.flush()
        self._out = os.fdopen(os.dup(1), "w")
        self._err = os.fdopen(os.dup(2), "w")
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._pump = threading.Thread(target=self._drain, args=(read_end,), name="console", daemon=True)
        self._pump.start()
        return self

    def _drain(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace").rstrip("\n")
                if not line.strip():
                    continue
                target = self.target
                if target is not None:
                    try:
                        target.append_log(f"[library] {line}")
                    except OSError:
                        pass
                if self.verbose and self._err is not None:
                    self._err.write(line + "\n")
                    self._err.flush()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        assert self._out is not None and self._err is not None
        os.dup2(self._out.fileno(), 1)  # the pipe's last writers here are gone: the pump reads to its end
        os.dup2(self._err.fileno(), 2)
        if self._pump is not None:
            self._pump.join(timeout=2.0)  # a process that kept the pipe open must not hold the run up
        self._out.close()
        self._err.close()
        self._out = self._err = None
