"""A unit file's system-call sandbox, applied without systemd: a launcher for the tests.

``python -m tests.support.sandbox UNIT -- COMMAND...`` reads the seccomp settings of the
``[Service]`` section of *UNIT*, loads the same filters with libseccomp (through ctypes, from
Debian's ``libseccomp2``) and execs *COMMAND* under them, as systemd 252 does for a service:

- ``SystemCallFilter=``: the first line decides allow-list (no ``~``) or deny-list; an
  allow-list starts from ``@default``; later lines add (allow-list) or, with ``~``, remove
  system calls, in order. ``@groups`` are expanded with ``systemd-analyze syscall-filter``,
  which works without systemd running. Calls outside the list fail with
  ``SystemCallErrorNumber=`` (EPERM here) instead of killing the process.
- ``ProtectClock=yes``: a second filter fails every ``@clock`` call with EPERM (systemd also
  closes ``/dev/rtc``, which the daemon never opens).
- ``SystemCallArchitectures=native``: libseccomp's filters cover the native ABI only.
- ``RestrictAddressFamilies=``: ``socket()`` for any other family fails with EAFNOSUPPORT.
- ``NoNewPrivileges=``: set always, as seccomp requires for an unprivileged process.
- ``MemoryDenyWriteExecute=yes``: the kernel's own ``PR_SET_MDWE`` (Linux 6.3+), which refuses
  what systemd's filter refuses (memory both writable and executable, or made executable
  later); inherited across exec. On an older kernel the launcher refuses to run.

Not applied (they are not system-call filters, or need PID 1): mount namespaces and
``ProtectSystem=``, the device cgroup, ``IPAddressDeny=``, capabilities, users.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["SyscallSandbox", "install", "launcher", "sandbox_from_unit", "service_settings"]

_SCMP_ACT_ALLOW = 0x7FFF0000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_MDWE = 65
_PR_MDWE_REFUSE_EXEC_GAIN = 1
_SCMP_CMP_EQ = 4
_SCMP_CMP_GE = 5


def _scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp from seccomp.h
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def service_settings(unit: Path) -> list[tuple[str, str]]:
    """The ``[Service]`` section of *unit* as ordered (key, value) pairs, repeats kept."""
    pairs: list[tuple[str, str]] = []
    section = None
    pending = ""
    for raw in unit.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        if section == "Service":
            pairs.append((key.strip(), value.strip()))
    return pairs


@cache
def expand(name: str) -> frozenset[str]:
    """System-call names in *name*: ``@group`` (recursively, by systemd-analyze) or one call."""
    if not name.startswith("@"):
        return frozenset({name})
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise RuntimeError("systemd-analyze not found: install Debian's systemd package")
    out = subprocess.run(
        [tool, "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:  # the first line repeats the group's name
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= expand(word)
    if not calls:
        raise RuntimeError(f"systemd-analyze knows no system-call group {name}")
    return frozenset(calls)


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "yes", "true", "on")


@dataclass(frozen=True)
class SyscallSandbox:
    """The seccomp part of a service's sandbox, as systemd would load it."""

    calls: frozenset[str]  # allowed (allow_list) or denied (not allow_list)
    allow_list: bool
    errno_number: int  # what a filtered call fails with
    protect_clock: bool
    address_families: frozenset[int] | None  # allowed socket() families; None: any
    deny_write_execute: bool = False


def sandbox_from_unit(unit: Path) -> SyscallSandbox:
    """Read SystemCallFilter=, SystemCallErrorNumber=, ProtectClock= and
    RestrictAddressFamilies= from *unit*, with systemd 252's rules for repeated lines."""
    calls: set[str] = set()
    allow_list: bool | None = None
    errno_number = errno.EPERM
    protect_clock = False
    families: set[int] | None = None
    deny_write_execute = False
    for key, value in service_settings(unit):
        if key == "SystemCallFilter":
            if not value:
                calls, allow_list = set(), None
                continue
            invert = value.startswith("~")
            if allow_list is None:
                allow_list = not invert
                if allow_list:
                    calls |= expand("@default")
            names = set().union(*(expand(w) for w in value.lstrip("~").split()))
            if invert == allow_list:  # "~" on an allow-list, or a plain line on a deny-list
                calls -= names
            else:
                calls |= names
        elif key == "SystemCallErrorNumber":
            errno_number = getattr(errno, value)
        elif key == "ProtectClock":
            protect_clock = _truthy(value)
        elif key == "MemoryDenyWriteExecute":
            deny_write_execute = _truthy(value)
        elif key == "RestrictAddressFamilies":
            if value.startswith("~") or not value:
                raise NotImplementedError("only an allow-list of address families is modelled")
            families = (families or set()) | {getattr(socket, w) for w in value.split()}
    if allow_list is None:
        raise ValueError(f"{unit}: no SystemCallFilter=")
    return SyscallSandbox(
        frozenset(calls),
        allow_list,
        errno_number,
        protect_clock,
        frozenset(families) if families is not None else None,
        deny_write_execute,
    )


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _load(lib: ctypes.CDLL, default: int, rules: list[tuple[str, int, list[_ArgCmp]]]) -> None:
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name, action, conditions in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a call of this architecture (e.g. the *32 and *64 variants)
                continue
            array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
            rc = lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array)
            if rc != 0 and rc != -errno.EACCES:  # EACCES: the rule equals the default action
                raise OSError(-rc, f"seccomp_rule_add {name}: {os.strerror(-rc)}")
        rc = lib.seccomp_load(ctx)
        if rc != 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
    finally:
        lib.seccomp_release(ctx)


def install(sandbox: SyscallSandbox) -> None:
    """Load *sandbox*'s filters into this process (and what it execs); irreversible."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if sandbox.deny_write_execute and libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE): needs Linux 6.3 or later")
    lib = _libseccomp()
    if sandbox.address_families is not None:
        refuse = _scmp_act_errno(errno.EAFNOSUPPORT)
        top = max(sandbox.address_families) + 1
        rules = [
            ("socket", refuse, [_ArgCmp(0, _SCMP_CMP_EQ, family, 0)])
            for family in range(top)
            if family not in sandbox.address_families
        ]
        rules.append(("socket", refuse, [_ArgCmp(0, _SCMP_CMP_GE, top, 0)]))
        _load(lib, _SCMP_ACT_ALLOW, rules)
    if sandbox.protect_clock:
        clock = _scmp_act_errno(errno.EPERM)
        _load(lib, _SCMP_ACT_ALLOW, [(name, clock, []) for name in sorted(expand("@clock"))])
    # The main filter last: the calls the others make while loading are allowed by it anyway.
    refused = _scmp_act_errno(sandbox.errno_number)
    if sandbox.allow_list:
        _load(lib, refused, [(name, _SCMP_ACT_ALLOW, []) for name in sorted(sandbox.calls)])
    else:
        _load(lib, _SCMP_ACT_ALLOW, [(name, refused, []) for name in sorted(sandbox.calls)])


def launcher(unit: Path) -> list[str]:
    """The argument prefix that runs a command under *unit*'s sandbox (``Unit.wrapper``)."""
    return [sys.executable, "-m", "tests.support.sandbox", str(unit), "--"]


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m tests.support.sandbox UNIT -- COMMAND [ARG...]")
    sandbox = sandbox_from_unit(Path(argv[0]))
    command = argv[2:]
    install(sandbox)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
