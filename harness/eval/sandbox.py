"""Run untrusted Python (model-written code and its tests) in a separate, confined process.

Layers, strongest available first:
- Namespaces (root, or unprivileged user namespaces): ``unshare --net --pid --fork --kill-child`` gives
  the program no network interfaces and its own PID namespace. The harness is not visible from
  inside (no ``os.kill`` of it), and killing the ``unshare`` process kills every process inside,
  including forks that left the process group.
- Privilege drop (when the harness runs as root): ``setpriv`` runs the program as ``nobody``, so it
  cannot write to root-owned files and RLIMIT_NPROC is enforced (root ignores it).
- In-process guard (always): before the program runs, a trusted prologue sets rlimits (address space,
  CPU seconds, processes, file size, open files, no core dumps) and installs an audit hook that
  refuses socket creation and signals to other processes, the fallback where namespaces are missing.
- The program runs in a fresh temporary directory with a scrubbed environment (``python -I -S``: no
  PYTHON* variables, no site-packages, no user site); the directory is deleted afterwards.
- A wall-clock timeout kills the whole process group.

World-writable directories (/tmp, /dev/shm) stay writable for ``nobody``; everything owned by the
harness's user is not.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NOBODY = 65534

# Trusted prologue: runs first in the child, then executes the program file. Audit hooks cannot be
# removed once added.
_PROLOGUE = r"""
import json, os, resource, signal, sys
limits = json.loads(sys.argv[1])
for name, value in limits.items():
    # CPU: SIGXCPU at the soft limit names the cause (a signal death is garbled when relayed through
    # unshare); the hard limit a second later SIGKILLs a program that ignores it
    hard = value + 1 if name == "RLIMIT_CPU" else value
    resource.setrlimit(getattr(resource, name), (value, hard))
def on_cpu_limit(signum, frame):
    os.write(2, b"\nsandbox: CPU time limit exceeded\n")
    os._exit(124)
signal.signal(signal.SIGXCPU, on_cpu_limit)
def guard(event, args, blocked=frozenset(("socket.__new__", "socket.bind", "socket.connect", "socket.getaddrinfo",
                                          "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen"))):
    if event in blocked:
        raise PermissionError(f"sandbox: {event} is not allowed")
sys.addaudithook(guard)
path = sys.argv[2]
del json, resource, limits, guard, hard
with open(path, encoding="utf-8") as f:
    source = f.read()
sys.argv = [path]
exec(compile(source, path, "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass
class SandboxResult:
    passed: bool
    reason: str  # "passed", "timeout", "failed: <last line of stderr>"
    seconds: float


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run([*cmd, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, ...]:
    """The command prefix that confines the child here (cached per process)."""
    if not shutil.which("unshare"):
        return ()
    ns = ["unshare", "--net", "--pid", "--fork", "--kill-child"]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        if _works([*ns, "--", *drop, "--"]):
            return (*ns, "--", *drop, "--")
    for prefix in (ns, ["unshare", "--map-root-user", *ns[1:]]):
        if _works([*prefix, "--"]):
            return (*prefix, "--")
    return ()


def _rlimits(cfg) -> dict[str, int]:
    mb = 1024 * 1024
    return {
        "RLIMIT_AS": cfg.memory_mb * mb,
        "RLIMIT_CPU": cfg.cpu_seconds,
        "RLIMIT_NPROC": cfg.max_processes,
        "RLIMIT_FSIZE": cfg.max_file_mb * mb,
        "RLIMIT_NOFILE": cfg.max_open_files,
        "RLIMIT_CORE": 0,
    }


def _tail(path: Path, n: int = 2000) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - n))
        return f.read().decode("utf-8", errors="replace")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_python(program: str, cfg) -> SandboxResult:
    """Run ``program`` (Python source) confined by ``cfg`` (harness.config.SandboxConfig): passed iff it
    exits with status 0 within ``cfg.wall_seconds``."""
    prefix = isolation_prefix()
    drops_privileges = "setpriv" in prefix
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as work, \
            tempfile.TemporaryDirectory(prefix="harness-sandbox-log-") as logs:
        workdir = Path(work)
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if drops_privileges:
            os.chown(workdir, NOBODY, NOBODY)
        stderr_path = Path(logs) / "stderr"
        env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}
        cmd = [*prefix, sys.executable, "-I", "-S", "-c", _PROLOGUE, json.dumps(_rlimits(cfg)),
               str(workdir / "program.py")]
        with open(stderr_path, "wb") as err:  # a file, not a pipe: output floods cannot fill our memory
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
            try:
                rc = proc.wait(timeout=cfg.wall_seconds)
                reason = "passed" if rc == 0 else None
                if "--pid" not in prefix:  # without a PID namespace, leftovers live on in the group
                    _kill_group(proc)
            except BaseException as e:
                _kill_group(proc)
                if not isinstance(e, subprocess.TimeoutExpired):
                    raise
                rc, reason = None, "timeout"
        if reason is None:
            lines = [ln for ln in _tail(stderr_path).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else f"exit status {rc}"
            if rc is not None and rc < 0:
                why = f"killed by {signal.Signals(-rc).name}"
            reason = f"failed: {why[:300]}"
    return SandboxResult(reason == "passed", reason, time.perf_counter() - t0)
