"""The seccomp program on its own: its encoding, its numbers against the kernel headers where they are
installed, and its verdicts, evaluated by a small classic-BPF interpreter (the kernel's check of the
same filter is in test_sandbox.py)."""
import errno
import re
import struct
from pathlib import Path

import pytest

from harness.eval import seccomp
from harness.eval.seccomp import (ARCHES, AUDIT_ARCH_AARCH64, AUDIT_ARCH_X86_64, CLONE_NEW, DENIED,
                                  SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS)

ALLOW, KILL = SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
EPERM, ENOSYS = SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.ENOSYS
AUDIT_ARCH_I386 = 3 | 0x40000000  # EM_386 | __AUDIT_ARCH_LE
SIGCHLD = 17
FORK_FLAGS = 0x01200000 | SIGCHLD  # glibc fork: CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID
THREAD_FLAGS = 0x003D0F00  # glibc pthread_create: VM, FS, FILES, SIGHAND, THREAD, SYSVSEM, SETTLS, *_TID
HEADERS = Path("/usr/include")


def evaluate(program: bytes, nr: int, arch: int, arg0: int = 0) -> int:
    """Classic BPF as seccomp runs it, for the instructions the filter uses, over a seccomp_data."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    insns = [seccomp.INSTRUCTION.unpack_from(program, i) for i in range(0, len(program), seccomp.INSTRUCTION.size)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.LOAD:
            acc = struct.unpack_from("=I", data, k)[0]
        elif code in (seccomp.JEQ, seccomp.JSET):
            taken = acc == k if code == seccomp.JEQ else bool(acc & k)
            pc += jt if taken else jf
        elif code == seccomp.RET:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")
        pc += 1


@pytest.mark.parametrize("machine, count", [("x86_64", 24), ("aarch64", 23)])
def test_encoding(machine, count):
    insns = seccomp.instructions(ARCHES[machine])
    program = seccomp.program(machine)
    assert seccomp.INSTRUCTION.size == 8 and len(insns) == count and len(program) == 8 * count
    assert program == b"".join(struct.pack("=HBBI", *i) for i in insns)
    for pc, (code, jt, jf, _) in enumerate(insns):  # every jump lands inside the program
        assert code == seccomp.RET or pc + 1 + max(jt, jf) < len(insns)
    assert insns[-1][0] == seccomp.RET  # the last instruction returns: the kernel's checker insists


def test_unsupported_architecture():
    with pytest.raises(seccomp.UnsupportedArchitecture, match="no seccomp syscall table for 'riscv64'"):
        seccomp.program("riscv64")


@pytest.mark.parametrize("machine, audit_arch", [("x86_64", AUDIT_ARCH_X86_64), ("aarch64", AUDIT_ARCH_AARCH64)])
def test_verdicts(machine, audit_arch):
    program, nr = seccomp.program(machine), ARCHES[machine].numbers
    verdict = lambda name, arg0=0: evaluate(program, nr[name], audit_arch, arg0)  # noqa: E731
    for flag, value in CLONE_NEW.items():
        assert verdict("unshare", value) == EPERM, flag
        assert verdict("clone", value | SIGCHLD) == EPERM, flag
    assert verdict("unshare", CLONE_NEW["NEWUSER"] | CLONE_NEW["NEWNS"]) == EPERM
    assert verdict("clone", FORK_FLAGS) == verdict("clone", THREAD_FLAGS) == ALLOW
    assert verdict("unshare", 0x400) == ALLOW  # CLONE_FILES: no namespace
    assert verdict("unshare", 1 << 40) == ALLOW  # only the low 32 bits hold flags
    assert verdict("clone3") == ENOSYS
    assert all(verdict(name) == EPERM for name in DENIED)
    ordinary = [n for n in range(450) if n not in nr.values()]  # read, write, execve, fork, ...
    assert {evaluate(program, n, audit_arch, CLONE_NEW["NEWUSER"]) for n in ordinary} == {ALLOW}
    assert evaluate(program, nr["unshare"], AUDIT_ARCH_I386, CLONE_NEW["NEWUSER"]) == KILL
    assert evaluate(program, 0, AUDIT_ARCH_AARCH64 if machine == "x86_64" else AUDIT_ARCH_X86_64) == KILL


def test_x32_syscalls_are_refused():
    program = seccomp.program("x86_64")
    assert evaluate(program, 0x40000000 | 39, AUDIT_ARCH_X86_64) == ENOSYS  # x32 getpid
    assert evaluate(program, 0x40000000 | 272, AUDIT_ARCH_X86_64, CLONE_NEW["NEWUSER"]) == ENOSYS


def _defines(path: Path, prefix: str) -> dict[str, int]:
    if not path.exists():
        pytest.skip(f"{path} not installed (apt-get install linux-libc-dev)")
    found = re.findall(rf"^#define\s+{prefix}(\w+)\s+(0x[0-9a-fA-F]+|\d+)", path.read_text(), re.M)
    return {name: int(value, 0) for name, value in found}


@pytest.mark.parametrize("machine, header", [("x86_64", "x86_64-linux-gnu/asm/unistd_64.h"),
                                             ("aarch64", "asm-generic/unistd.h")])
def test_syscall_numbers_match_the_kernel_headers(machine, header):
    kernel = _defines(HEADERS / header, "__NR_")
    assert {name: kernel[name] for name in ARCHES[machine].numbers} == ARCHES[machine].numbers


def test_flags_and_actions_match_the_kernel_headers():
    sched = _defines(HEADERS / "linux/sched.h", "CLONE_")
    assert {name: sched[name] for name in CLONE_NEW} == CLONE_NEW
    actions = _defines(HEADERS / "linux/seccomp.h", "SECCOMP_RET_")
    assert (actions["ALLOW"], actions["ERRNO"], actions["KILL_PROCESS"]) == (ALLOW, SECCOMP_RET_ERRNO, KILL)
    bpf = _defines(HEADERS / "linux/bpf_common.h", "BPF_")
    assert seccomp.LOAD == bpf["LD"] | bpf["W"] | bpf["ABS"] and seccomp.RET == bpf["RET"] | bpf["K"]
    assert (seccomp.JEQ, seccomp.JSET) == (bpf["JMP"] | bpf["JEQ"], bpf["JMP"] | bpf["JSET"])
