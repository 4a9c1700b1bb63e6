"""The sandbox contains hostile programs: each ends as a failed sample, the test process survives and
nothing outside the sandbox changes. The containment tests run at every isolation level that works
here (the fallbacks included); the private-filesystem tests need bubblewrap, the namespace and mount
refusals its seccomp filter (harness/eval/seccomp.py, whose program tests/harness/eval/test_seccomp.py
checks on its own)."""
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import textwrap
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from harness.config import SandboxConfig
from harness.eval import sandbox, seccomp
from harness.eval.sandbox import LEVELS, available_levels, isolation_level, run_python

REPO = Path(__file__).resolve().parents[3]
CFG = SandboxConfig(wall_seconds=5.0, cpu_seconds=4, memory_mb=512, max_processes=32, max_file_mb=1,
                    max_open_files=32)

ADD_OK = '''
def add(a, b):
    return a + b

def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0

check(add)
'''

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
SECCOMP_ARCH = platform.machine() in seccomp.ARCHES


def _skip_unavailable(level: str) -> None:
    if level not in sandbox.BWRAP_LEVELS:
        pytest.skip(f"no {level} namespaces here")
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    if level == "bwrap+seccomp" and not SECCOMP_ARCH:
        pytest.skip(f"no seccomp syscall table for {platform.machine()}")
    # installed but unusable: test_bwrap_is_the_level_where_installed reports it once
    pytest.skip(f"bubblewrap is installed but {level} does not work here")


@pytest.fixture(params=LEVELS)
def level(request):
    if request.param not in available_levels():
        _skip_unavailable(request.param)
    return request.param


@pytest.fixture
def seccomp_level():
    """The level with the seccomp filter; skipped only where bubblewrap or the syscall table is missing."""
    if "bwrap+seccomp" not in available_levels():
        _skip_unavailable("bwrap+seccomp")
    return "bwrap+seccomp"


def run(src: str, level: str | None = None, cfg=CFG):
    return run_python(textwrap.dedent(src), cfg, level)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --- containment, at every level -------------------------------------------------------------------

def test_correct_program_passes(level):
    r = run(ADD_OK, level)
    assert r.passed and r.reason == "passed" and r.level == level


def test_wrong_program_fails_with_reason(level):
    r = run(ADD_OK.replace("a + b", "a - b"), level)
    assert not r.passed and r.reason.startswith("failed:") and "AssertionError" in r.reason


def test_infinite_loop_times_out(level):
    r = run("while True:\n    pass\n", level)
    assert not r.passed and r.reason in ("timeout", "failed: killed by SIGKILL", "failed: killed by SIGXCPU") \
        or "CPU" in r.reason
    assert r.seconds < CFG.wall_seconds + 5


def test_sleeping_program_hits_wall_clock(level):
    r = run("import time\ntime.sleep(60)\n", level)
    assert not r.passed and r.reason == "timeout"


def test_fork_bomb_is_contained(level):
    # RLIMIT_NPROC counts every process of the sandbox user, so a bomb at the full limit would make
    # a program sandboxed at the same time (the other xdist worker) fail to fork: this one gets 8
    r = run("""
        import os
        while True:
            os.fork()
    """, level, replace(CFG, max_processes=8))
    assert not r.passed and ("BlockingIOError" in r.reason or r.reason == "timeout"), r.reason
    assert run(ADD_OK, level).passed  # we are still here and can still start processes
    # the bomb's last processes can take a moment to die; they would count against the next
    # program's process limit (the same user), so the next tests wait for them
    deadline = time.monotonic() + 10
    while os.geteuid() == 0 and _processes_of(sandbox.NOBODY) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_failure_reason_skips_a_traceback_cut_short(tmp_path):
    # a fork bomb's children write their tracebacks at once; the last may stop at a frame line
    err = tmp_path / "stderr"
    err.write_text('Traceback (most recent call last):\n  File "/tmp/p.py", line 4, in <module>\n    os.fork()\n'
                   "BlockingIOError: [Errno 11] Resource temporarily unavailable\n"
                   'Traceback (most recent call last):\n  File "/tmp/p.py", line 4, in <module>\n')
    assert sandbox._failure(1, err) == "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable"
    err.write_text('  File "/tmp/p.py", line 4, in <module>\n')  # nothing but scaffolding: the last line
    assert sandbox._failure(1, err) == 'failed: File "/tmp/p.py", line 4, in <module>'
    err.write_text("ValueError: first\n    second\n")  # a message's own indented line is kept
    assert sandbox._failure(1, err) == "failed: second"


def _processes_of(uid: int) -> list[str]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uids = next(line for line in status.read_text().splitlines() if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uids.split()[1]) == uid:
            found.append(status.parent.name)
    return found


def test_huge_allocation_fails(level):
    r = run("x = bytearray(10 * 1024 ** 3)\n", level)
    assert not r.passed and "MemoryError" in r.reason


def test_cannot_write_host_files(level, tmp_path):
    target = tmp_path / "escaped.txt"  # root's (or our user's) directory on the host
    r = run(f"""
        with open({str(target)!r}, "w") as f:
            f.write("pwned")
    """, level)
    # bwrap: the directory does not exist in there; elsewhere: it is not nobody's
    assert not r.passed and ("PermissionError" in r.reason or "FileNotFoundError" in r.reason), r.reason
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_may_write_inside_its_directory(level):
    r = run("""
        with open("scratch.txt", "w") as f:
            f.write("ok")
        assert open("scratch.txt").read() == "ok"
    """, level)
    assert r.passed, r.reason


def test_file_size_limit(level):
    r = run("""
        with open("big.bin", "wb") as f:
            f.write(b"x" * (8 * 1024 * 1024))
    """, level)
    assert not r.passed and "File too large" in r.reason, r.reason


def test_open_files_limit(level):
    r = run("files = [open(f'f{i}', 'w') for i in range(100)]\n", level)
    assert not r.passed and "Too many open files" in r.reason, r.reason


def test_environment_is_scrubbed(level, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_SECRET", "hunter2")
    r = run("""
        import glob, os
        assert "hunter2" not in repr(dict(os.environ)), "secret leaked"
        assert "HARNESS_TEST_SECRET" not in os.environ
        for path in glob.glob("/proc/[0-9]*/environ"):  # nor through another process, the parent's included
            try:
                assert b"hunter2" not in open(path, "rb").read(), path
            except (PermissionError, ProcessLookupError, FileNotFoundError):
                pass
    """, level)
    assert r.passed, r.reason  # the child ran and saw no secret
    r = run("""
        import os
        assert os.environ.get("HARNESS_TEST_SECRET") == "hunter2"
    """, level)
    assert not r.passed


def test_no_network(level):
    with socket.socket() as server:  # a listener the child would reach without the sandbox
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        """, level)
    assert not r.passed and ("Error" in r.reason), r.reason


def test_cannot_kill_the_parent(level):
    r = run(f"""
        import os, signal
        os.kill({os.getpid()}, signal.SIGKILL)
    """, level)
    assert not r.passed and ("PermissionError" in r.reason or "ProcessLookupError" in r.reason)
    # and we are alive to assert it


def _processes_with(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:
            pass
    return found


@pytest.mark.parametrize("ending", ["exit", "timeout"])
def test_no_process_outlives_the_program(level, ending):
    if level == "rlimits":
        pytest.skip("without a PID namespace a process that left the group survives (the documented fallback)")
    marker = f"{time.time_ns() % 10 ** 9}.5"  # a unique argument to find the orphan by
    r = run(f"""
        import subprocess, time
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True)
        time.sleep({60 if ending == "timeout" else 0})
    """, level)
    assert r.reason == ("timeout" if ending == "timeout" else "passed"), r.reason
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


# --- the level: probed once, recorded, forced ------------------------------------------------------

def test_level_is_recorded_and_can_be_forced():
    assert run(ADD_OK).level == isolation_level() == available_levels()[0]
    assert available_levels()[-1] == "rlimits"
    assert run(ADD_OK, "rlimits").level == "rlimits"
    with pytest.raises(ValueError, match="sandbox level 'chroot' is unknown; available here"):
        run(ADD_OK, "chroot")


@pytest.mark.parametrize("why", ["not installed", "no namespaces"])
def test_probe_falls_back_without_bubblewrap(monkeypatch, why):
    if why == "not installed":
        real_which = shutil.which
        monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    else:  # installed, but the probe cannot create its namespaces (e.g. an unprivileged container)
        real_works = sandbox._works
        monkeypatch.setattr(sandbox, "_works", lambda cmd, **kw: cmd[0] != "bwrap" and real_works(cmd, **kw))
    sandbox.available_levels.cache_clear()
    try:
        assert not set(sandbox.BWRAP_LEVELS) & set(available_levels())
        assert run(ADD_OK).level == isolation_level() not in sandbox.BWRAP_LEVELS
        for forced in sandbox.BWRAP_LEVELS:
            with pytest.raises(ValueError, match=re.escape(f"'{forced}' is not available here")):
                run(ADD_OK, forced)
    finally:
        sandbox.available_levels.cache_clear()


@needs_bwrap
def test_unsupported_architecture_falls_back_to_plain_bwrap(monkeypatch):
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    sandbox.available_levels.cache_clear()
    sandbox._seccomp_program.cache_clear()
    try:
        assert available_levels()[0] == "bwrap" and "bwrap+seccomp" not in available_levels()
        r = run("assert open('/proc/self/status').read().count('Seccomp:\\t0') == 1\n")
        assert r.passed and r.level == "bwrap", r.reason  # recorded as the weaker level, and it is
        with pytest.raises(ValueError, match=r"'bwrap\+seccomp' is not available here \(no seccomp syscall "
                                             r"table for 'riscv64' \(supported: x86_64, aarch64\)\)"):
            run(ADD_OK, "bwrap+seccomp")
    finally:
        sandbox.available_levels.cache_clear()
        sandbox._seccomp_program.cache_clear()


@needs_bwrap
def test_bwrap_is_the_level_where_installed():
    why = ("bubblewrap is installed but its probe failed: try `bwrap --ro-bind / / true` to see why"
           if "bwrap" not in available_levels() else "bwrap works, but not with its seccomp filter (--seccomp)")
    assert isolation_level() == ("bwrap+seccomp" if SECCOMP_ARCH else "bwrap"), why


# --- the private filesystem (bwrap) ----------------------------------------------------------------

@needs_bwrap
def test_tmp_and_shm_writes_stay_inside():
    names = [f"/tmp/{unique('qh-sandbox')}", f"/dev/shm/{unique('qh-sandbox')}"]
    r = run(f"""
        for name in {names!r}:
            with open(name, "w") as f:
                f.write("scratch")
            assert open(name).read() == "scratch"
    """)
    assert r.passed, r.reason  # scratch files are fine: they live in the sandbox's own tmpfs
    assert [n for n in names if os.path.exists(n)] == []


@needs_bwrap
def test_total_writable_space_is_bounded():
    cfg = replace(CFG, max_file_mb=16)  # each 10 MiB file is under the per-file limit; together they are not
    names = [f"/tmp/{unique('qh-sandbox')}", f"/dev/shm/{unique('qh-sandbox')}", unique("qh-sandbox")]
    r = run(f"""
        for path in {names!r}:
            with open(path, "wb") as f:
                f.write(b"x" * (10 * 1024 * 1024))
    """, cfg=cfg)
    assert not r.passed and "No space left on device" in r.reason, r.reason
    assert [n for n in names[:2] if os.path.exists(n)] == []


@needs_bwrap
def test_parent_files_are_hidden():
    (REPO / "results" / "cache").mkdir(parents=True, exist_ok=True)
    secrets = [tempfile.mkstemp(prefix=".sandbox-secret-", dir=d) for d in (REPO / "results" / "cache", Path.home())]
    try:
        for fd, path in secrets:
            os.write(fd, b"hunter2")
            os.close(fd)
        paths = [path for _, path in secrets] + [str(REPO / "README.md")]
        r = run(f"""
            import os
            for path in {paths!r}:
                assert not os.path.exists(path), path
        """)
        assert r.passed, r.reason
    finally:
        for _, path in secrets:
            os.unlink(path)


@needs_bwrap
def test_system_is_read_only():
    r = run("""
        import os
        for path in ("/usr/qh-sandbox", "/qh-sandbox", "/dev/qh-sandbox", "/sandbox/program.py"):
            try:
                open(path, "w").close()
            except OSError:
                continue
            raise AssertionError(f"wrote {path}")
    """)
    assert r.passed, r.reason


@needs_bwrap
def test_only_loopback_inside():
    # if_nameindex opens its socket in C, past the audit hook: only the namespace hides the NICs
    r = run("import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n")
    assert r.passed, r.reason


# --- the seccomp filter (bwrap+seccomp): no namespaces, no mounts; processes and threads as usual ---

# Runs in a second interpreter inside the sandbox: the prologue's audit hook refuses ctypes in the
# program itself, but a native binary the program writes has no hook, and these are its syscalls.
_RAW_SYSCALLS = '''
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
nr, new = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def errno_of(*args):
    ctypes.set_errno(0)
    rc = libc.syscall(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if rc == 0 and args[0] == nr["clone"]:
        os._exit(0)  # the clone child, had it been allowed
    return ctypes.get_errno() if rc == -1 else "succeeded"
user_ns = os.open("/proc/self/ns/user", os.O_RDONLY)
print(json.dumps({
    **{f"unshare {flag}": errno_of(nr["unshare"], value) for flag, value in new.items()},
    **{f"clone {flag}": errno_of(nr["clone"], value | 17, 0, 0, 0, 0) for flag, value in new.items()},
    "clone3": errno_of(nr["clone3"], 0, 0),
    "setns": errno_of(nr["setns"], user_ns, 0),
    "mount": errno_of(nr["mount"], b"none", b"/tmp", b"tmpfs", 0, 0),
    "umount2": errno_of(nr["umount2"], b"/proc", 0),
    "pivot_root": errno_of(nr["pivot_root"], b"/tmp", b"/tmp"),
    "fsopen": errno_of(nr["fsopen"], b"tmpfs", 0),
    "open_tree": errno_of(nr["open_tree"], -100, b"/tmp", 1),
}))
'''


def test_raw_namespace_and_mount_syscalls_are_refused(seccomp_level):
    numbers = seccomp.arch_for().numbers
    r = run(f"""
        import errno, json, subprocess, sys
        out = subprocess.run([sys.executable, "-c", {_RAW_SYSCALLS!r}, {json.dumps(numbers)!r},
                              {json.dumps(seccomp.CLONE_NEW)!r}], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-500:]
        got = json.loads(out.stdout)
        expected = {{name: errno.ENOSYS if name == "clone3" else errno.EPERM for name in got}}
        assert got == expected, {{k: v for k, v in got.items() if v != expected[k]}}
    """, seccomp_level)
    assert r.passed, r.reason


def test_python_unshare_is_refused(seccomp_level):
    r = run("""
        import errno, os, subprocess, sys
        if hasattr(os, "unshare"):  # Python 3.12
            try:
                os.unshare(os.CLONE_NEWUSER)
            except PermissionError as e:
                assert e.errno == errno.EPERM
            else:
                raise AssertionError("os.unshare succeeded")
        else:  # ctypes in a second interpreter: the audit hook refuses it in this one
            code = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
                    "print(libc.unshare(0x10000000), ctypes.get_errno())")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            assert out.stdout.split() == ["-1", str(errno.EPERM)], (out.stdout, out.stderr[-300:])
    """, seccomp_level)
    assert r.passed, r.reason


def test_unshare_and_mount_commands_fail(seccomp_level):
    # the attack itself: root in a user namespace of its own, then a tmpfs past the quota
    r = run("""
        import os, subprocess
        assert os.path.exists("/usr/bin/unshare") and os.path.exists("/usr/bin/mount")
        for cmd in (["unshare", "-Urm", "true"],
                    ["unshare", "-Urm", "mount", "-t", "tmpfs", "-o", "size=1g", "none", "/dev/shm"],
                    ["mount", "-t", "tmpfs", "none", "/dev/shm"]):
            out = subprocess.run(cmd, capture_output=True, text=True)
            assert out.returncode != 0, cmd
            # mount alone stops at "must be superuser"; the raw syscall's EPERM is checked above
            assert any(w in out.stderr for w in ("not permitted", "superuser")), (cmd, out.stderr)
        assert "Operation not permitted" in subprocess.run(["unshare", "-U", "true"], capture_output=True,
                                                            text=True).stderr
    """, seccomp_level)
    assert r.passed, r.reason


def test_processes_still_start(seccomp_level):
    # fork and posix_spawn go through clone (glibc falls back from clone3 on ENOSYS), without CLONE_NEW*
    r = run("""
        import os, subprocess, sys
        assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, text=True).stdout == "1\\n"
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
        pid = os.posix_spawn("/bin/true", ["true"], {})
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    """, seccomp_level)
    assert r.passed, r.reason


def test_threads_still_start(seccomp_level):
    r = run("""
        import threading
        from concurrent.futures import ThreadPoolExecutor
        seen = []
        threads = [threading.Thread(target=seen.append, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seen) == [0, 1, 2, 3]
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
    """, seccomp_level)
    assert r.passed, r.reason


def test_filter_is_installed_and_its_pipe_closed(seccomp_level):
    r = run("""
        import os
        status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines())
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1", (status["Seccomp"], status["NoNewPrivs"])
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
        assert fds == [0, 1, 2, 3], fds  # stdio and listdir's own: bwrap closed the filter's pipe
    """, seccomp_level)
    assert r.passed, r.reason
