"""A real single-node Slurm for the tests: munge, MariaDB, slurmdbd, slurmctld and slurmd.

Everything lives under one temporary directory with its own ports, so the
machine's own Slurm configuration (if any) is never touched: clients find the
cluster through SLURM_CONF. Accounting (slurmdbd + MariaDB bound to 127.0.0.1)
is on, so `sacct`, which submitit reads job states from, reports real states.
The Debian packages are installed with apt-get if they are missing (CI runs
as root on a fresh Debian 12 machine).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server"]
BINARIES = [
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
    "sacctmgr",
]
CLUSTER_NAME = "depsci"
PARTITION = "debug"
MUNGE_SOCKET = "/run/munge/munge.socket.2"


class SlurmUnavailable(RuntimeError):
    """Slurm is missing and cannot be installed here (not root): the Slurm tests are skipped, saying why."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def ensure_installed() -> None:
    """Install the Debian packages if a binary is missing; raise RuntimeError if that is not possible."""
    if not missing_binaries():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} missing) and apt-get needs root"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        capture_output=True,
        timeout=900,
    )
    if missing_binaries():
        raise RuntimeError(f"still missing after apt-get install: {', '.join(missing_binaries())}")


def _free_ports(count: int) -> list[int]:
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _wait(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}\n{tail}")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 1024
    return 1024


@dataclass
class SlurmCluster:
    base: Path
    env: dict[str, str]
    cpus: int
    pid_files: list[Path] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "etc" / "slurm.conf"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def node_state(self) -> str:
        result = self.run("sinfo", "-h", "-o", "%T", check=False)
        return result.stdout.strip()

    def stop(self) -> None:
        for job in self.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
            self.run("scancel", job, check=False)
        for pid_file in reversed(self.pid_files):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            _terminate(pid)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        shutil.rmtree(self.base, ignore_errors=True)


def _terminate(pid: int, timeout: float = 20) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def _munge_works() -> bool:
    if _which("munge") is None or not Path(MUNGE_SOCKET).exists():
        return False
    return subprocess.run([_which("munge"), "-n"], capture_output=True, timeout=10).returncode == 0


def _start_munge(cluster: SlurmCluster) -> None:
    """Use the machine's munged if one answers; otherwise start one with a fresh key on the default socket.

    Slurm's clients (sacctmgr, sbatch) always talk to munge on the default socket, so ours lives there too.
    """
    if _munge_works():
        return
    base = cluster.base
    key = base / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    Path(MUNGE_SOCKET).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            _which("munged"),
            "--force",
            f"--key-file={key}",
            f"--socket={MUNGE_SOCKET}",
            f"--pid-file={base / 'run' / 'munged.pid'}",
            f"--log-file={base / 'log' / 'munged.log'}",
            f"--seed-file={base / 'munge' / 'seed'}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    cluster.pid_files.append(base / "run" / "munged.pid")
    _wait(_munge_works, 20, "munged", base / "log" / "munged.log")


def start_cluster() -> SlurmCluster:
    """Start munge, MariaDB, slurmdbd, slurmctld and slurmd; return once the node is idle."""
    ensure_installed()
    base = Path(tempfile.mkdtemp(prefix="deps-slurm-"))
    base.chmod(0o755)
    for sub in ("etc", "munge", "db", "ctld", "slurmd", "log", "run"):
        (base / sub).mkdir()
    (base / "munge").chmod(0o700)
    cpus = os.cpu_count() or 1
    ctld_port, slurmd_port, dbd_port, db_port = _free_ports(4)
    env = {**os.environ, "SLURM_CONF": str(base / "etc" / "slurm.conf")}
    cluster = SlurmCluster(base=base, env=env, cpus=cpus)
    try:
        _start_munge(cluster)

        datadir = base / "db" / "data"
        subprocess.run(
            [
                _which("mariadb-install-db"),
                "--user=root",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        db_socket = base / "db" / "mysqld.sock"
        cluster.processes.append(
            subprocess.Popen(
                [
                    _which("mariadbd"),
                    "--no-defaults",
                    "--user=root",
                    f"--datadir={datadir}",
                    f"--socket={db_socket}",
                    f"--port={db_port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={base / 'run' / 'mariadb.pid'}",
                    f"--log-error={base / 'log' / 'mariadb.log'}",
                    "--innodb-buffer-pool-size=32M",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        _wait(db_socket.exists, 60, "MariaDB", base / "log" / "mariadb.log")

        _write(
            base / "etc" / "slurmdbd.conf",
            "\n".join(
                [
                    "AuthType=auth/munge",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={dbd_port}",
                    "SlurmUser=root",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={db_port}",
                    "StorageUser=root",
                    "StorageLoc=slurm_acct_db",
                    f"PidFile={base / 'run' / 'slurmdbd.pid'}",
                    f"LogFile={base / 'log' / 'slurmdbd.log'}",
                    "",
                ]
            ),
            mode=0o600,
        )
        _write(
            cluster.conf,
            "\n".join(
                [
                    f"ClusterName={CLUSTER_NAME}",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    # A requeued job may start again after the credential lifetime (default 120 s); keep tests quick.
                    "AuthInfo=cred_expire=10",
                    "KillWait=15",
                    "MpiDefault=none",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "SchedulerType=sched/backfill",
                    # A requeued job becomes eligible later without an event: look for it every 5 s, not 30-60.
                    "SchedulerParameters=bf_interval=5,sched_interval=5",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "ReturnToService=2",
                    f"StateSaveLocation={base / 'ctld'}",
                    f"SlurmdSpoolDir={base / 'slurmd'}",
                    f"SlurmctldPidFile={base / 'run' / 'slurmctld.pid'}",
                    f"SlurmdPidFile={base / 'run' / 'slurmd.pid'}",
                    f"SlurmctldLogFile={base / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={base / 'log' / 'slurmd.log'}",
                    "AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=localhost",
                    f"AccountingStoragePort={dbd_port}",
                    "JobCompType=jobcomp/none",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
                    f"PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            ),
        )
        subprocess.run([_which("slurmdbd")], env=env, check=True, capture_output=True, timeout=30)
        cluster.pid_files.append(base / "run" / "slurmdbd.pid")
        _wait(
            lambda: cluster.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=False).returncode == 0,
            60,
            "slurmdbd to add the cluster",
            base / "log" / "slurmdbd.log",
        )
        subprocess.run([_which("slurmctld"), "-f", str(cluster.conf)], env=env, check=True, capture_output=True)
        cluster.pid_files.append(base / "run" / "slurmctld.pid")
        subprocess.run(
            [_which("slurmd"), "-f", str(cluster.conf), "-N", "localhost"], env=env, check=True, capture_output=True
        )
        cluster.pid_files.append(base / "run" / "slurmd.pid")
        _wait(lambda: cluster.node_state() == "idle", 60, "the node to be idle", base / "log" / "slurmctld.log")
    except BaseException:
        cluster.stop()
        raise
    return cluster


_CLUSTER: SlurmCluster | None = None


def shared_cluster() -> SlurmCluster:
    """One cluster per test process, stopped when the process exits."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = start_cluster()
        atexit.register(_CLUSTER.stop)
    return _CLUSTER
