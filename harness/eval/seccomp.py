"""A seccomp filter (classic BPF) for the bwrap sandbox: the program may not create namespaces or mount.

Without it, ``nobody`` in the sandbox can still make a user namespace (``unshare -Urm``, or the raw
syscalls from any binary it writes), become root in there and mount tmpfs beyond the sandbox's one
size-limited tmpfs. bwrap installs the filter (``--seccomp FD``) just before it executes the command.

Verdicts:
- a foreign architecture (``seccomp_data.arch``): the process is killed (its syscall numbers mean
  something else); on x86_64 the x32 ABI (numbers with bit 30 set): ENOSYS;
- ``unshare`` and ``clone`` with any CLONE_NEW* flag: EPERM (fork and threads use clone without them);
- ``clone3``: ENOSYS, because its flags sit behind a pointer seccomp cannot follow; glibc then
  falls back to ``clone``, which the filter can read;
- ``setns`` and the mount family (old and new mount API): EPERM;
- everything else: allowed.

Numbers are from the kernel's uapi headers (linux/seccomp.h, filter.h, bpf_common.h, audit.h,
sched.h, asm/unistd_64.h and asm-generic/unistd.h).
"""
from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}, in the kernel's (native) byte order
INSTRUCTION = struct.Struct("=HBBI")

# classic BPF opcodes (linux/bpf_common.h)
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS, BPF_K = 0x00, 0x20, 0x00
BPF_JEQ, BPF_JSET = 0x10, 0x40
LOAD = BPF_LD | BPF_W | BPF_ABS
JEQ = BPF_JMP | BPF_JEQ | BPF_K
JSET = BPF_JMP | BPF_JSET | BPF_K
RET = BPF_RET | BPF_K

# struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6]}; both supported
# architectures are little-endian, so args[0]'s low 32 bits come first
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0_LOW = 0, 4, 16

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# linux/sched.h. CLONE_NEWTIME shares the exit-signal byte on clone (no signal number reaches it);
# only unshare and clone3 read it as a namespace, but refusing it on clone costs nothing
CLONE_NEW = {"NEWNS": 0x00020000, "NEWCGROUP": 0x02000000, "NEWUTS": 0x04000000, "NEWIPC": 0x08000000,
             "NEWUSER": 0x10000000, "NEWPID": 0x20000000, "NEWNET": 0x40000000, "NEWTIME": 0x00000080}
CLONE_NEW_MASK = sum(CLONE_NEW.values())
X32_SYSCALL_BIT = 0x40000000

# linux/audit.h, linux/elf-em.h
AUDIT_ARCH_64BIT, AUDIT_ARCH_LE = 0x80000000, 0x40000000
AUDIT_ARCH_X86_64 = 62 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE  # EM_X86_64
AUDIT_ARCH_AARCH64 = 183 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE  # EM_AARCH64


@dataclass(frozen=True)
class Arch:
    audit_arch: int
    numbers: dict[str, int]  # syscall name -> number
    has_x32: bool


DENIED = ("setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsmount", "fsconfig",
          "fspick", "mount_setattr")
# the new mount API's numbers are the same on every architecture (asm-generic and unistd_64.h alike)
_COMMON = {"clone3": 435, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
           "fspick": 433, "mount_setattr": 442}
ARCHES = {
    "x86_64": Arch(AUDIT_ARCH_X86_64, {
        **_COMMON, "clone": 56, "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155},
        has_x32=True),
    "aarch64": Arch(AUDIT_ARCH_AARCH64, {
        **_COMMON, "clone": 220, "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41},
        has_x32=False),
}


class UnsupportedArchitecture(RuntimeError):
    pass


def arch_for(machine: str | None = None) -> Arch:
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise UnsupportedArchitecture(f"no seccomp syscall table for {machine!r} (supported: {', '.join(ARCHES)})")
    return ARCHES[machine]


def _errno(code: int) -> int:
    return SECCOMP_RET_ERRNO | code


def instructions(arch: Arch) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) tuples. Jumps are written to labels and resolved to the
    forward offsets BPF wants (skip this many instructions)."""
    nr = arch.numbers
    body: list = [(LOAD, 0, 0, OFFSET_ARCH), (JEQ, "next", "kill", arch.audit_arch), (LOAD, 0, 0, OFFSET_NR)]
    if arch.has_x32:
        body.append((JSET, "enosys", "next", X32_SYSCALL_BIT))
    body.append((JEQ, "enosys", "next", nr["clone3"]))
    body += [(JEQ, "eperm", "next", nr[name]) for name in DENIED]
    body += [(JEQ, "flags", "next", nr["unshare"]), (JEQ, "flags", "allow", nr["clone"]),
             "flags", (LOAD, 0, 0, OFFSET_ARG0_LOW), (JSET, "eperm", "allow", CLONE_NEW_MASK),
             "allow", (RET, 0, 0, SECCOMP_RET_ALLOW),
             "eperm", (RET, 0, 0, _errno(errno.EPERM)),
             "enosys", (RET, 0, 0, _errno(errno.ENOSYS)),
             "kill", (RET, 0, 0, SECCOMP_RET_KILL_PROCESS)]
    return _resolve(body)


def _resolve(body: list) -> list[tuple[int, int, int, int]]:
    labels, program = {}, []
    for item in body:
        if isinstance(item, str):
            labels[item] = len(program)
        else:
            program.append(item)

    def offset(target, pc):
        if target == "next":
            return 0
        if not isinstance(target, str):
            return target
        skip = labels[target] - pc - 1
        if not 0 <= skip <= 255:  # classic BPF only jumps forward, by a byte at most
            raise ValueError(f"jump to {target!r} from {pc} out of range")
        return skip

    return [(code, offset(jt, pc), offset(jf, pc), k) for pc, (code, jt, jf, k) in enumerate(program)]


def program(machine: str | None = None) -> bytes:
    """The compiled filter for this machine (or ``machine``), as bwrap's ``--seccomp`` reads it:
    the sock_filter array, nothing else. Raises UnsupportedArchitecture elsewhere."""
    return b"".join(INSTRUCTION.pack(*insn) for insn in instructions(arch_for(machine)))
