"""Run untrusted Python (model-written code and its tests) in a separate, confined process.

Isolation levels, strongest first; :func:`isolation_level` probes once per process and picks the
first that works here, and every result records the level it ran under:

- ``bwrap+seccomp``: ``bwrap`` below plus a seccomp filter (harness/eval/seccomp.py) that refuses
  creating namespaces and mounting, so the program cannot make a user namespace of its own and mount
  tmpfs past its quota. Needs a syscall table for this architecture (x86_64, aarch64); elsewhere
  the level is missing and ``bwrap`` is the strongest.
- ``bwrap`` (bubblewrap; as root it runs privileged, otherwise in a user namespace): new mount, PID,
  network and IPC namespaces. The child sees a private filesystem: the system directories
  (``/usr`` ...) and the Python installation read-only, the program file read-only, a fresh
  ``/proc`` and ``/dev``, and ONE writable tmpfs at ``/dev/shm`` of ``max_file_mb`` in total (the
  same number bounds each file), which ``/tmp`` and the working directory point into. The
  repository, home directories, ``/root`` (but the interpreter), ``/etc`` (but the loader cache) and
  ``/var`` are not there. Everything it writes vanishes with it.
- ``unshare``: network and PID namespaces only; the host filesystem is visible (writable where
  ``nobody`` may write, e.g. ``/tmp``).
- ``rlimits``: no namespaces; the in-process guard below is all there is.

At every level:
- Privilege drop (when the harness runs as root): ``setpriv`` runs the program as ``nobody``, so it
  cannot write to root-owned files and RLIMIT_NPROC is enforced (root ignores it).
- In-process guard: before the program runs, a trusted prologue sets rlimits (address space, CPU
  seconds, processes, file size, open files, no core dumps) and installs an audit hook that refuses
  socket creation and signals to other processes.
- A scrubbed environment (``python -I -S``: no PYTHON* variables, no site-packages, no user site),
  a fresh working directory deleted afterwards, and a wall-clock timeout that kills the whole
  process group (and, with a PID namespace, everything inside it).
"""
from __future__ import annotations

import contextlib
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

from harness.eval import seccomp

NOBODY = 65534
MB = 1024 * 1024
LEVELS = ("bwrap+seccomp", "bwrap", "unshare", "rlimits")  # strongest first
BWRAP_LEVELS = LEVELS[:2]

# Paths inside the bwrap sandbox. The one size-limited tmpfs sits at /dev/shm because bwrap's --dev
# already makes that directory (a symlink cannot replace it); /tmp points there, so both share one quota.
SCRATCH = "/dev/shm"
PROGRAM = "/sandbox/program.py"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

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
    level: str  # the isolation level it ran under (one of LEVELS)


def _works(cmd: list[str], pass_fds: tuple[int, ...] = ()) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10, cwd="/", pass_fds=pass_fds).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _interpreter() -> str:
    """The real interpreter: a virtual environment's ``bin/python`` is a link into a directory the
    bwrap sandbox does not show (the program imports nothing from site-packages anyway)."""
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=1)
def _privilege_drop() -> tuple[str, ...]:
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    return ()


def _is_within(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _system_mounts() -> list[str]:
    """Read-only system directories (symlinks such as a merged /usr's /lib -> usr/lib copied as such)
    and the Python installation wherever it lives (e.g. under /root with pyenv)."""
    args, shown = [], []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            shown.append(d)
    python_dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    python_dirs.add(os.path.dirname(_interpreter()))
    for d in sorted(python_dirs):  # sorted: a prefix comes before the directories inside it
        if not _is_within(d, shown):
            # bwrap would create the missing parents (/root ...) as 0700: nobody could not reach it
            for parent in reversed(Path(d).parents[:-1]):
                args += ["--perms", "0755", "--dir", str(parent)]
            args += ["--ro-bind", d, d]
            shown.append(d)
    return args + ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]


@functools.lru_cache(maxsize=1)
def _seccomp_program() -> bytes | str:
    """The compiled filter for this machine, or why there is none."""
    try:
        return seccomp.program()
    except seccomp.UnsupportedArchitecture as e:
        return str(e)


@contextlib.contextmanager
def _seccomp_fd(level: str):
    """For ``bwrap+seccomp``, the read end of a pipe holding the filter (bwrap reads it to the end),
    else None."""
    if level != "bwrap+seccomp":
        yield None
        return
    filt = _seccomp_program()
    if not isinstance(filt, bytes):
        raise RuntimeError(f"sandbox: {filt}")
    r, w = os.pipe()
    try:
        with open(w, "wb") as f:  # a few hundred bytes: far under a pipe's buffer
            f.write(filt)
        yield r
    finally:
        os.close(r)


def _bwrap_prefix(scratch_bytes: int, program: Path | None, seccomp_fd: int | None = None) -> list[str]:
    """bwrap arguments up to the command: namespaces, the read-only view, one writable tmpfs, and
    the seccomp filter waiting on ``seccomp_fd`` if given."""
    args = ["bwrap", "--unshare-pid", "--unshare-net", "--die-with-parent",
            # SysV shared memory would otherwise outlive the sandbox in the host's IPC namespace
            "--unshare-ipc",
            *_system_mounts(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(scratch_bytes), "--perms", "1777", "--tmpfs", SCRATCH, "--symlink", SCRATCH, "/tmp"]
    if seccomp_fd is not None:
        args += ["--seccomp", str(seccomp_fd)]
    if program is not None:
        # bwrap would make the file's new parent directory 0700 (root's), unreadable for nobody
        args += ["--perms", "0755", "--dir", os.path.dirname(PROGRAM), "--ro-bind", str(program), PROGRAM]
    # without a user namespace these are root's and unwritable for nobody anyway; inside one they
    # belong to the caller and would be unbounded writable space
    args += ["--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp", "--"]
    return args


@functools.lru_cache(maxsize=1)
def _unshare_prefix() -> tuple[str, ...] | None:
    """``unshare`` arguments that give a network and PID namespace here, or None."""
    if not shutil.which("unshare"):
        return None
    ns = ("unshare", "--net", "--pid", "--fork", "--kill-child")
    for prefix in (ns, ("unshare", "--map-root-user", *ns[1:])):
        if _works([*prefix, "--", *_privilege_drop(), "true"]):
            return (*prefix, "--")
    return None


def _bwrap_works(level: str) -> bool:
    """Runs a trivial program exactly as a real one would run at ``level`` (a bwrap level)."""
    if level == "bwrap+seccomp" and not isinstance(_seccomp_program(), bytes):
        return False
    with _seccomp_fd(level) as fd:
        return _works([*_bwrap_prefix(MB, None, fd), *_privilege_drop(), _interpreter(), "-I", "-S", "-c", "pass"],
                      pass_fds=() if fd is None else (fd,))


@functools.lru_cache(maxsize=1)
def available_levels() -> tuple[str, ...]:
    """The levels (of LEVELS, strongest first) that work on this machine, probed once per process."""
    found = []
    if shutil.which("bwrap"):
        found += [level for level in BWRAP_LEVELS if _bwrap_works(level)]
    if _unshare_prefix() is not None:
        found.append("unshare")
    return (*found, "rlimits")


def isolation_level() -> str:
    """The strongest level that works here: what :func:`run_python` uses unless told otherwise."""
    return available_levels()[0]


def _rlimits(cfg) -> dict[str, int]:
    return {
        "RLIMIT_AS": cfg.memory_mb * MB,
        "RLIMIT_CPU": cfg.cpu_seconds,
        "RLIMIT_NPROC": cfg.max_processes,
        "RLIMIT_FSIZE": cfg.max_file_mb * MB,
        "RLIMIT_NOFILE": cfg.max_open_files,
        "RLIMIT_CORE": 0,
    }


def _command(level: str, cfg, workdir: Path, seccomp_fd: int | None) -> tuple[list[str], str]:
    """(argv, the child's working directory as the child sees it)."""
    if level in BWRAP_LEVELS:
        prefix = _bwrap_prefix(cfg.max_file_mb * MB, workdir / "program.py", seccomp_fd)
        interpreter, inside, program = _interpreter(), "/tmp", PROGRAM
    else:
        prefix = list(_unshare_prefix()) if level == "unshare" else []
        interpreter, inside, program = sys.executable, str(workdir), str(workdir / "program.py")
    return [*prefix, *_privilege_drop(), interpreter, "-I", "-S", "-c", _PROLOGUE, json.dumps(_rlimits(cfg)),
            program], inside


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


def _failure(rc: int | None, stderr_path: Path) -> str:
    lines = [ln for ln in _tail(stderr_path).splitlines() if ln.strip()]
    why = _last_message(lines) if lines else f"exit status {rc}"
    if rc is not None and rc < 0:
        why = f"killed by {signal.Signals(-rc).name}"
    return f"failed: {why[:300]}"


def _last_message(lines: list[str]) -> str:
    """The last stderr line that is not a traceback's scaffolding (its header, a frame's ``File ...``
    line and the indented source and caret lines under it). Processes writing tracebacks at once (a
    fork bomb's children) or one killed mid-write leave a traceback cut short, whose last line names
    a frame, not an error; the error is then the last complete one before it. Only scaffolding: the
    last line as it is."""
    def scaffolding(i: int) -> bool:
        s = lines[i].strip()
        return (s.startswith('File "') or s == "Traceback (most recent call last):"
                or (i > 0 and lines[i].startswith("    ") and scaffolding(i - 1)))

    for i in range(len(lines) - 1, -1, -1):
        if not scaffolding(i):
            return lines[i].strip()
    return lines[-1].strip()


def _unavailable(level: str) -> str:
    what = "not available here" if level in LEVELS else "unknown"
    filt = _seccomp_program()
    why = f" ({filt})" if level == "bwrap+seccomp" and not isinstance(filt, bytes) else ""
    return f"sandbox level {level!r} is {what}{why}; available here: {', '.join(available_levels())}"


def run_python(program: str, cfg, level: str | None = None) -> SandboxResult:
    """Run ``program`` (Python source) confined by ``cfg`` (harness.config.SandboxConfig): passed iff it
    exits with status 0 within ``cfg.wall_seconds``. ``level`` (one of LEVELS) overrides the probed
    :func:`isolation_level`; it must work here."""
    level = level or isolation_level()
    if level not in available_levels():
        raise ValueError(_unavailable(level))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="harness-sandbox-") as work, \
            tempfile.TemporaryDirectory(prefix="harness-sandbox-log-") as logs:
        workdir = Path(work)
        (workdir / "program.py").write_text(program, encoding="utf-8")
        os.chmod(workdir / "program.py", 0o644)  # whatever the umask: nobody reads it
        if _privilege_drop() and level not in BWRAP_LEVELS:  # under bwrap it works in its own tmpfs instead
            os.chown(workdir, NOBODY, NOBODY)
        stderr_path = Path(logs) / "stderr"
        # a file, not a pipe: output floods cannot fill our memory
        with open(stderr_path, "wb") as err, _seccomp_fd(level) as fd:
            cmd, inside = _command(level, cfg, workdir, fd)
            env = {"PATH": "/usr/bin:/bin", "HOME": inside, "TMPDIR": inside, "LANG": "C.UTF-8"}
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True, pass_fds=() if fd is None else (fd,))
            try:
                rc = proc.wait(timeout=cfg.wall_seconds)
                reason = "passed" if rc == 0 else None
                if level == "rlimits":  # without a PID namespace, leftovers live on in the group
                    _kill_group(proc)
            except BaseException as e:
                _kill_group(proc)
                if not isinstance(e, subprocess.TimeoutExpired):
                    raise
                rc, reason = None, "timeout"
        reason = reason or _failure(rc, stderr_path)
    return SandboxResult(reason == "passed", reason, time.perf_counter() - t0, level)
