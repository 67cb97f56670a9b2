"""Ray on one node of an allocation: started in a session of its own, stopped so that nothing is left behind.

`ray start` daemonises, and its processes then escape Slurm's process tracking
(proctrack/linuxproc): `scancel` leaves them running. Here each node runs
`ray start --block` in a new session, outside the job's process tree (setsid
--fork). Every Ray process (GCS, raylet, dashboard, workers) inherits that
session id, which survives re-parenting and process renaming, so stopping Ray
means signalling exactly that session, never `ray stop` (which kills every Ray
cluster of the user on the node, another job's too). Being outside the tree,
Ray is not hit by the SIGTERM Slurm sends the job on scancel or preemption:
the driver stops first (cleanly, its run left INTERRUPTED), then Ray. A small
detached reaper watches the process that started Ray and stops the session
when that process dies, however it dies (SIGKILL after Slurm's grace period,
a requeue, a crash).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.ray_env import prepare_ray_environment

READY_LINE = "Ray runtime started"
PORT_OPTIONS = (
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
    "--runtime-env-agent-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs Slurm gave this task (CUDA_VISIBLE_DEVICES), as Ray will number them; [] without GPUs."""
    value = (environ if environ is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return []
    devices = [d.strip() for d in value.split(",") if d.strip()]
    if devices in ([], ["NoDevFiles"], ["-1"]):
        return []
    return devices


def ray_executable(python: str | None = None) -> str:
    """The `ray` CLI next to the interpreter (a venv's bin/), else from PATH."""
    candidate = Path(python or sys.executable).with_name("ray")
    return str(candidate) if candidate.exists() else "ray"


def start_command(
    *,
    head_address: str | None,
    port: int | None,
    num_cpus: int,
    num_gpus: int,
    expose_dashboard: bool,
    temp_dir: Path | None = None,
    node_ip: str | None = None,
    python: str | None = None,
    dashboard_port: int | None = None,
) -> list[str]:
    """`ray start --block` for a head (head_address None) or a worker joining head_address."""
    command = [ray_executable(python), "start", "--block", "--disable-usage-stats"]
    command += [f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}"]
    if node_ip is not None:
        command.append(f"--node-ip-address={node_ip}")
    if head_address is None:
        command += ["--head", f"--port={port}", "--include-dashboard=true"]
        command.append(f"--dashboard-host={'0.0.0.0' if expose_dashboard else '127.0.0.1'}")
        command.append(f"--dashboard-port={dashboard_port or free_port()}")
        command.append(f"--ray-client-server-port={free_port()}")
        if temp_dir is not None:
            command.append(f"--temp-dir={temp_dir}")
    else:
        command.append(f"--address={head_address}")
    # Fixed defaults (52365, 8080, ...) would collide with another Ray on the same node.
    command += [f"{option}={free_port()}" for option in PORT_OPTIONS]
    return command


@dataclass
class RayNode:
    """A `ray start --block` process leading its own session; `session` is its pid and every Ray process's sid."""

    session: int
    log_path: Path

    def alive(self) -> bool:
        return bool(session_members(self.session))

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if READY_LINE in self._log():
                return
            if not self.alive():
                raise RuntimeError(f"ray start exited: {self._log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"ray start not ready after {timeout:.0f}s: {self._log_tail()}")

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        lines = [line for line in self._log().splitlines() if line.strip()]
        return " | ".join(lines[-5:])

    def stop(self, grace: float = 10.0) -> int:
        return stop_session(self.session, grace)


def start_node(command: list[str], log_path: Path, watch_pid: int | None = None, timeout: float = 30.0) -> RayNode:
    """Start `ray start --block` in a new session outside this process tree; a reaper stops it once `watch_pid` ends."""
    prepare_ray_environment()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_file = log_path.with_name(log_path.name + ".pid")
    pid_file.unlink(missing_ok=True)
    # setsid --fork: the shell becomes a session leader whose parent exits at once; it records its pid and
    # turns into `ray start`, which keeps that pid. USR2 is ignored there and so in every Ray process after it
    # (an ignored signal stays ignored across exec): Slurm's time-limit warning is the job head's to handle, and
    # by default it would kill a training worker that a cgroup-tracking Slurm signals with the rest of the step.
    launcher = ["setsid", "--fork", "sh", "-c", 'trap "" USR2; echo $$ > "$0"; exec "$@"', str(pid_file), *command]
    with open(log_path, "ab") as log:
        subprocess.run(launcher, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=True)
    deadline = time.time() + timeout
    while not pid_file.exists() or not pid_file.read_text().strip():
        if time.time() > deadline:
            raise RuntimeError(f"ray start did not start: no pid in {pid_file}")
        time.sleep(0.05)
    node = RayNode(int(pid_file.read_text().strip()), log_path)
    spawn_reaper(watch_pid if watch_pid is not None else os.getpid(), node.session)
    return node


def session_members(session: int) -> list[int]:
    """Processes whose session id is `session` (field 6 of /proc/<pid>/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) "
        if len(fields) > 3 and int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def stop_session(session: int, grace: float = 10.0) -> int:
    """SIGTERM every process of the session, SIGKILL what is left after `grace` seconds; returns how many there were."""
    members = session_members(session)
    for pid in members:
        _signal(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and session_members(session):
        time.sleep(0.2)
    for pid in session_members(session):
        _signal(pid, signal.SIGKILL)
    deadline = time.time() + 5
    while time.time() < deadline and session_members(session):
        time.sleep(0.1)
    return len(members)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()[19]


def spawn_reaper(watch_pid: int, session: int) -> None:
    """A process outside this one's process tree (double fork) that runs `reap`; it outlives a SIGKILL of the tree."""
    started = _start_time(watch_pid) or ""
    command = [sys.executable, "-m", "orchestrator.backends.ray_node", "reap", str(watch_pid), started, str(session)]
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execv(sys.executable, command)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _same_process(pid: int, started: str) -> bool:
    """The process `pid` still runs, and is the one that started at `started` (not a new one with a reused pid)."""
    now = _start_time(pid)
    return now is not None and (not started or now == started)


def reap(watch_pid: int, started: str, session: int, poll: float = 1.0) -> None:
    """Wait until `watch_pid` is gone, then stop the session; leave early once the session stopped the normal way."""
    empty_since: float | None = None
    while _same_process(watch_pid, started):
        if session_members(session):
            empty_since = None
        elif empty_since is None:
            empty_since = time.time()
        elif time.time() - empty_since > 5.0:
            return
        time.sleep(poll)
    stop_session(session)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "reap":
        reap(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
