"""A throwaway PostgreSQL server for the tests, the fleet benchmark and a laptop trying the PostgreSQL store:
``with LocalPostgres(folder) as url: ...`` runs Debian's ``initdb``/``pg_ctl`` in ``folder`` on a free loopback
port (as the ``postgres`` user when run as root, which PostgreSQL refuses to run as) and stops it at the end.
:func:`unavailable` says why it cannot run here (no server binaries, no pgvector), or None."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path

from edgeclip.core.errors import EdgeClipError


def _bindir() -> Path | None:
    """Debian's server binaries (/usr/lib/postgresql/N/bin, the newest), else a pg_ctl on the PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if dirs:
        return Path(dirs[-1])
    found = shutil.which("pg_ctl")
    return Path(os.path.realpath(found)).parent if found else None


def unavailable() -> str | None:
    """Why a local PostgreSQL + pgvector cannot be started here, or None."""
    b = _bindir()
    if b is None or not (b / "initdb").is_file():
        return "PostgreSQL's server is not installed (Debian: apt-get install postgresql)"
    share = None
    if (b / "pg_config").is_file():
        share = subprocess.run([str(b / "pg_config"), "--sharedir"], capture_output=True, text=True)
    sharedir = (
        share.stdout.strip() if share and share.returncode == 0 else f"/usr/share/postgresql/{b.parent.name}"
    )
    if not Path(sharedir, "extension", "vector.control").is_file():
        return f"pgvector is not installed for PostgreSQL {b.parent.name} (Debian: postgresql-{b.parent.name}-pgvector)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (PostgreSQL will not run as root)"
    return None


class LocalPostgres:
    def __init__(self, folder: str | os.PathLike):
        why = unavailable()
        if why:
            raise EdgeClipError(f"cannot start a local PostgreSQL: {why}")
        self.bin, self.dir, self.own = _bindir(), Path(folder).resolve(), False
        if (
            os.geteuid() == 0
        ):  # the postgres user cannot reach into root's private folders: a folder of its own
            import tempfile

            self.dir, self.own = Path(tempfile.mkdtemp(prefix="edgeclip-pg-")), True
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://edgeclip@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if p.returncode:
            raise EdgeClipError(f"{args[0]} failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")

    def __enter__(self) -> str:
        data = self.dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not (data / "PG_VERSION").is_file():
            self._run("initdb", "-D", str(data), "-U", "edgeclip", "--auth=trust", "-E", "UTF8")
        self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200",
            "start",
        )
        return self.url

    def __exit__(self, *exc) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")
        if self.own:
            shutil.rmtree(self.dir, ignore_errors=True)
