"""The sandbox contains hostile programs: each ends as a failed sample, the test process survives and
nothing outside the sandbox's own directory changes."""
import os
import socket
import textwrap

import pytest

from harness.config import SandboxConfig
from harness.eval.sandbox import isolation_prefix, run_python

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


def run(src: str):
    return run_python(textwrap.dedent(src), CFG)


def test_correct_program_passes():
    r = run(ADD_OK)
    assert r.passed and r.reason == "passed"


def test_wrong_program_fails_with_reason():
    r = run(ADD_OK.replace("a + b", "a - b"))
    assert not r.passed and r.reason.startswith("failed:") and "AssertionError" in r.reason


def test_infinite_loop_times_out():
    r = run("while True:\n    pass\n")
    assert not r.passed and r.reason in ("timeout", "failed: killed by SIGKILL", "failed: killed by SIGXCPU") \
        or "CPU" in r.reason
    assert r.seconds < CFG.wall_seconds + 5


def test_sleeping_program_hits_wall_clock():
    r = run("import time\ntime.sleep(60)\n")
    assert not r.passed and r.reason == "timeout"


def test_fork_bomb_is_contained():
    r = run("""
        import os
        while True:
            os.fork()
    """)
    assert not r.passed and ("BlockingIOError" in r.reason or r.reason == "timeout"), r.reason
    assert os.getpid() > 0  # we are still here and can still start processes
    assert run(ADD_OK).passed


def test_huge_allocation_fails():
    r = run("x = bytearray(10 * 1024 ** 3)\n")
    assert not r.passed and "MemoryError" in r.reason


def test_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    r = run(f"""
        with open({str(target)!r}, "w") as f:
            f.write("pwned")
    """)
    assert not r.passed and "PermissionError" in r.reason
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_may_write_inside_its_directory():
    r = run("""
        with open("scratch.txt", "w") as f:
            f.write("ok")
        assert open("scratch.txt").read() == "ok"
    """)
    assert r.passed


def test_file_size_limit():
    r = run("""
        with open("big.bin", "wb") as f:
            f.write(b"x" * (8 * 1024 * 1024))
    """)
    assert not r.passed and "File too large" in r.reason, r.reason


def test_open_files_limit():
    r = run("files = [open(f'f{i}', 'w') for i in range(100)]\n")
    assert not r.passed and "Too many open files" in r.reason, r.reason


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_SECRET", "hunter2")
    r = run("""
        import os
        assert "hunter2" not in repr(dict(os.environ)), "secret leaked"
        assert "HARNESS_TEST_SECRET" not in os.environ
    """)
    assert r.passed  # the child ran and saw no secret
    r = run("""
        import os
        assert os.environ.get("HARNESS_TEST_SECRET") == "hunter2"
    """)
    assert not r.passed


def test_no_network():
    with socket.socket() as server:  # a listener the child would reach without the sandbox
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        r = run(f"""
            import socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=2)
        """)
    assert not r.passed and ("Error" in r.reason), r.reason


def test_cannot_kill_the_parent():
    r = run(f"""
        import os, signal
        os.kill({os.getpid()}, signal.SIGKILL)
    """)
    assert not r.passed and ("PermissionError" in r.reason or "ProcessLookupError" in r.reason)
    # and we are alive to assert it


def test_network_namespace_where_available():
    if os.geteuid() == 0 and os.path.exists("/usr/bin/unshare"):
        assert "--net" in isolation_prefix()
        # if_nameindex opens its socket in C, past the audit hook: only the namespace hides the NICs
        r = run("import socket\nassert [n for _, n in socket.if_nameindex()] == ['lo'], socket.if_nameindex()\n")
        assert r.passed, r.reason
    else:
        pytest.skip("no root/unshare here: the in-process guard is the fallback")
