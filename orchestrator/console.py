"""A run's console: our own lines on the terminal, everything else the process prints in the run's log.

While a run executes, file descriptors 1 and 2 of this process (and of what it
starts) lead into a pipe. What arrives there — library warnings, Ray's log lines
from its core worker and from the workers it forwards — is appended to the run's
`run.log`, marked `[library]`, and with `--verbose` also shown on the terminal.
Our own lines go to the terminal through `echo` and `error`. A terminal that
goes away (the reader of a pipe exits, as `| head` does) stops the echo, never
the run: its lines are in `run.log` anyway.
"""

from __future__ import annotations

import errno
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
        self._gone: set[str] = set()  # "out", "err": terminal streams whose reader has gone

    def echo(self, line: str) -> None:
        """One of our lines, on the terminal's standard output."""
        self._write("out", self._out or sys.stdout, line)

    def error(self, line: str) -> None:
        """One of our errors, on the terminal's standard error."""
        self._write("err", self._err or sys.stderr, line)

    def _write(self, name: str, stream: TextIO, line: str) -> None:
        if name in self._gone:
            return
        try:
            stream.write(line + "\n")
            stream.flush()
        except OSError as error:
            if not isinstance(error, BrokenPipeError) and error.errno != errno.EPIPE:
                raise
            self._gone.add(name)

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
                    self._write("err", self._err, line)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        assert self._out is not None and self._err is not None
        # The pipe's last writers here are gone: the pump reads to its end. A terminal stream whose reader went
        # becomes /dev/null, so what is printed later (and Python's flush at exit) does not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull if "out" in self._gone else self._out.fileno(), 1)
        os.dup2(devnull if "err" in self._gone else self._err.fileno(), 2)
        os.close(devnull)
        if self._pump is not None:
            self._pump.join(timeout=2.0)  # a process that kept the pipe open must not hold the run up
        for stream in (self._out, self._err):
            try:
                stream.close()
            except OSError:  # a gone reader: what was buffered has nowhere to go
                pass
        self._out = self._err = None
