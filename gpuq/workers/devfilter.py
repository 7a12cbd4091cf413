"""GPU device filtering under cgroup v2: a small eBPF program of type BPF_PROG_TYPE_CGROUP_DEVICE,
assembled here and attached to a job's cgroup with the bpf(2) system call (through ctypes).

cgroup v2 has no ``devices.deny`` file: the kernel asks the device programs attached to a task's
cgroup (and to its ancestors) before any ``open``/``mknod`` of a device node, and refuses with
EPERM when one says no.  The program gpuq attaches says no to exactly one thing: a character
device of major 195 (the NVIDIA driver's ``/dev/nvidiaN``) whose minor is a GPU's (below 254)
and not one of the job's own GPUs.  Everything else passes: ``nvidiactl`` (195:255),
``nvidia-modeset`` (195:254), ``nvidia-uvm`` and ``nvidia-caps`` (majors the driver picks at load
time), and every other device.  Attached without ``BPF_F_ALLOW_MULTI``: a second attach to the same cgroup
(a requeued job whose old cgroup could not be removed, now on other GPUs) replaces the first instead
of adding to it (with several programs the kernel lets a device through only when all agree, so the
job would lose its new GPU).  A job cannot attach programs of its own below it: its cgroup's files
are root's.  Programs on ancestors (a service manager's, attached with ``BPF_F_ALLOW_MULTI``) still
apply; an ancestor's program attached without it makes the attach fail, and the daemon says so.

The program (r1 points at ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor}``)::

    r2 = ctx->access_type & 0xffff      ; the device type (BPF_DEVCG_DEV_CHAR = 2)
    if r2 != 2 goto allow
    r3 = ctx->major ; if r3 != 195 goto allow
    r4 = ctx->minor ; if r4 >= 254 goto allow
    if r4 == own[0] goto allow ...      ; one test per GPU of the job
    r0 = 0 ; exit                       ; another GPU: EPERM
  allow:
    r0 = 1 ; exit
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from typing import Sequence

NVIDIA_MAJOR = 195
FIRST_NON_GPU_MINOR = 254  # 254 nvidia-modeset, 255 nvidiactl

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
_BPF_PROG_LOAD = 5
_BPF_PROG_ATTACH = 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6  # attach type
_ATTACH_REPLACING = 0  # attach flags: neither BPF_F_ALLOW_OVERRIDE nor BPF_F_ALLOW_MULTI (see the module doc)
_BPF_DEVCG_DEV_CHAR = 2
_ATTR_SIZE = 128  # the kernel accepts a larger zeroed union bpf_attr

# instruction classes and operations (linux/bpf_common.h, linux/bpf.h)
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W
_ALU64_AND_K = 0x57
_ALU64_MOV_K = 0xB7
_JMP_JEQ_K = 0x15
_JMP_JNE_K = 0x55
_JMP_JGE_K = 0x35
_EXIT = 0x95


class DeviceFilterUnavailable(OSError):
    """The kernel refused to load or attach the device program (no CAP_BPF/CAP_SYS_ADMIN,
    lockdown, no CONFIG_CGROUP_BPF, an ancestor's program that allows no others ...)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(own_minors: Sequence[int]) -> bytes:
    """The instructions that let through, of the GPU minors, only ``own_minors``."""
    own = sorted(set(m for m in own_minors if 0 <= m < FIRST_NON_GPU_MINOR))
    # instructions after the header and before "allow": one per own minor, then deny (2)
    body = [_insn(_JMP_JEQ_K, dst=4, imm=m, off=len(own) - i - 1 + 2) for i, m in enumerate(own)]
    deny = [_insn(_ALU64_MOV_K, dst=0, imm=0), _insn(_EXIT)]
    to_allow = len(body) + len(deny)  # jump distance from the end of the header's last test
    header = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0),
        _insn(_ALU64_AND_K, dst=2, imm=0xFFFF),
        _insn(_JMP_JNE_K, dst=2, imm=_BPF_DEVCG_DEV_CHAR, off=to_allow + 4),
        _insn(_LDX_MEM_W, dst=3, src=1, off=4),
        _insn(_JMP_JNE_K, dst=3, imm=NVIDIA_MAJOR, off=to_allow + 2),
        _insn(_LDX_MEM_W, dst=4, src=1, off=8),
        _insn(_JMP_JGE_K, dst=4, imm=FIRST_NON_GPU_MINOR, off=to_allow),
    ]
    allow = [_insn(_ALU64_MOV_K, dst=0, imm=1), _insn(_EXIT)]
    return b"".join(header + body + deny + allow)


def _bpf(cmd: int, attr: bytes) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise DeviceFilterUnavailable(0, f"gpuq does not know the bpf system call number on {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(attr, _ATTR_SIZE)
    r = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    if r < 0:
        e = ctypes.get_errno()
        raise DeviceFilterUnavailable(e, os.strerror(e))
    return int(r)


def _load(own_minors: Sequence[int]) -> int:
    insns = program(own_minors)
    code = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(16384)
    attr = struct.pack("<IIQQIIQII16sII", _BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(code),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0, b"gpuq_devices", 0,
                       _BPF_CGROUP_DEVICE)
    try:
        return _bpf(_BPF_PROG_LOAD, attr)
    except DeviceFilterUnavailable as e:
        verifier = log.value.decode(errors="replace").strip()
        raise DeviceFilterUnavailable(e.errno, f"loading the device program: {e.strerror}"
                                      + (f" (verifier: {verifier[-300:]})" if verifier else "")) from None


def attach(cgroup_dir: str, own_minors: Sequence[int]) -> None:
    """Attach a program to ``cgroup_dir`` (a cgroup2 directory) that denies every GPU device
    node except ``own_minors``.  The cgroup keeps the program until the cgroup is removed."""
    prog_fd = _load(own_minors)
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _bpf(_BPF_PROG_ATTACH, struct.pack("<IIII", dir_fd, prog_fd, _BPF_CGROUP_DEVICE, _ATTACH_REPLACING))
        except DeviceFilterUnavailable as e:
            raise DeviceFilterUnavailable(e.errno, f"attaching the device program to {cgroup_dir}: {e.strerror}") \
                from None
        finally:
            os.close(dir_fd)
    finally:
        os.close(prog_fd)
