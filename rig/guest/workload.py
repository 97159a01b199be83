"""The guest's broad, deterministic workload (init's ``workload`` command), host side.

``workload [part...]`` runs parts of a workload in the guest, each in a child of init of its own,
and answers ``digest=<16 hex>`` over the parts run plus ``<part>=<8 hex>`` per part, so a changed
digest names the part that changed. The digests hold only what is the same on every run and every
boot (checksums, byte counts, exit statuses, counts fixed by handshakes, return codes); the
``<part>_ms`` times are reported beside them for tuning. A part that fails (a step's error, a
timeout, a death) says so in ``<part>_failed=<step>:<error>`` and its digest changes with it.

What each part drives (rig/guest/init/wl_*.c):

* ``fork``: fork/wait4 by pid and any, exec of /init child programs (argv, envp, exec chains, stdin
  and stdout on pipes), vfork, clone(CLONE_VM), a chain of processes, an orphan re-parented to
  init, deaths by SIGSEGV, SIGFPE and a raised signal.
* ``pipe``: 256 KiB in uneven chunks, ping-pong, a non-blocking fill to EAGAIN, poll and select,
  four pipes polled at once, EPIPE and SIGPIPE.
* ``signal``: rt and old-style handlers, kill with pipe handshakes, SIGCHLD with siginfo, blocked
  and pending signals, queued rt signals (sigqueueinfo, sigtimedwait), sigsuspend, pause,
  ITIMER_REAL/VIRTUAL/PROF, alarm, nanosleep, SIGSTOP/SIGCONT; TIOCMIWAIT on the serial console's
  port (a descriptor of the part's own) asleep until SIGALRM without SA_RESTART ends it (-EINTR);
  /proc/self/status with a blocked set (its SigBlk line hashed).
* ``file``: ext2 (the initrd, remounted rw for the part) and a ramfs mounted at /mnt: files of
  many sizes (write, writev, pwrite, read, readv, pread, lseek, _llseek), sendfile, truncate,
  holes, fsync, link, rename, symlink, chmod, getdents, FIFOs, locks (a waiter blocked on a POSIX
  lock; a shared flock converted to exclusive under a blocked waiter, which the kernel yields to),
  dup, 120 small files and negative dentries; a Unix98 pty on a devpts mount; then /proc (slabinfo
  among them, also in small reads and after an lseek: read, never hashed).
* ``memory``: anonymous mmap and page faults, MADV_DONTNEED, mlock, mremap, copy-on-write across
  fork of an 8 MiB process, mprotect and SIGSEGV, munmap holes, MAP_SHARED/MAP_PRIVATE file
  mappings with msync and mincore, brk, and one short dip of free memory below the watermarks:
  real-time at first, so the dip itself reclaims in the page allocator's slow path
  (balance_classzone), then with kswapd and the slab reaper; a clean 1 MiB file in the page cache
  is there to reclaim and the dip ends while most of it is gone, so the OOM killer never acts.
  Older than it on the inactive list, a sparse 2 MiB file mapped page by page: the reclaim scan
  that meets it gives up once (swap_out) and shrinks the dentry and inode caches.
* ``sched``: priorities and policies (SCHED_FIFO/RR briefly, then SCHED_OTHER), getpriority,
  nice, rr interval, the sched_* calls' error paths (a pid beyond PID_MAX in init's bucket of the
  pid hash among them), 1000 pipe round trips, sleepers on one wait queue, CPU-bound children of
  different niceness, real-time bursts with yield, select timeouts, a process of another user
  (setuid: -EPERM for another's policy and niceness and for real-time), a SCHED_RR slice used up
  at nice 19, a child with an LDT of its own switching with its parent.
* ``tcp``: 2 MiB each way over loopback with checksums, socket options, shutdown, peek, ten short
  connections (TIME_WAIT), an abortive close, a refused connect.
* ``udp``: 120 datagrams of 1 byte to 60 kB echoed over loopback (each awaited, resent if lost),
  sendmsg/recvmsg, peek.
* ``unix``: stream and datagram socket pairs, a descriptor passed with SCM_RIGHTS, a socket bound
  to a path, 300 sockets made and closed.
* ``nic``: frames eth0 -> eth1 and back through both i82557b NICs (eepro100) on the QEMU hub over
  AF_PACKET (losses resent), promiscuous, all-multicast and multicast filters (more groups than
  the driver filters), MII, SIOCDEVPRIVATE and ethtool ioctls (their -EFAULT paths too), MTU,
  ifdown/ifup, /proc/net/dev. The driver's every debug message is on while the part runs
  (ETHTOOL_SMSGLVL; KERN_DEBUG, below the console's level; the unlevelled setup-frame message only
  for a few multicast changes), the saved levels back at the end. Both interfaces stay up
  afterwards, so the driver's 2 s media timer (speedo_timer) runs from the first run on; every
  later run starts from that same state.

Under TCG the whole workload takes about 1-2 s of guest time on an idle 2-core host.

``workload align=TICKS [part...]`` starts the parts right after the timer tick whose jiffies is a
multiple of TICKS, woken from idle, with kupdated's 5 s period restarted at that tick (see
``align_start`` in rig/guest/init/workload.c). Under ``-icount`` that takes the host's timing out
of a run: how long the guest idled before the command and where in a tick it arrived no longer
move the tick phase or the kernel's periodic timers relative to the parts. With
:data:`ALIGN_PERIODIC_TIMERS` (four minutes, a multiple of every periodic timer the guest runs) it
waits up to four minutes of guest time, which an idle guest under ``-icount sleep=off`` runs through
in about a second; under plain TCG those minutes are real, so there align to a tick (1).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rig.errors import RigError
from rig.guest.protocol import GuestCommandError, GuestConsole

PARTS: tuple[str, ...] = ("fork", "pipe", "signal", "file", "memory", "sched", "tcp", "udp", "unix", "nic")
DEFAULT_TIMEOUT_S = 120.0
# 240 s at HZ=100: a multiple of the periods of the guest's periodic kernel timers (the NICs'
# speedo_timer and dev_watchdog 2 s, kupdated 5 s, the TIME_WAIT reaper 7.5 s, the serial poll 10 s,
# neighbour gc 30 s, the route cache check 60 s, inet peer gc 120 s; read from the timer wheel), and
# twice the longest, so that a host a little slow to send the next command rarely misses its tick
# (an idle guest under -icount sleep=off runs through some 20000 ticks per host second).
ALIGN_PERIODIC_TIMERS = 24000


@dataclass(frozen=True)
class WorkloadResult:
    """One run of the workload: its digest, each part's, and how long each took (not hashed)."""

    digest: str                       # 16 hex digits over the parts run, in order
    parts: dict[str, str]             # part -> 8 hex digits
    part_seconds: dict[str, float]    # guest wall time of each part
    seconds: float                    # guest wall time of the whole command
    host_seconds: float               # request to reply, on the host
    failures: dict[str, str] = field(default_factory=dict)   # part -> "<step>:<error>"
    raw: str = ""
    start_jiffies: int | None = None  # where an aligned run started (align=TICKS), else None

    @property
    def ok(self) -> bool:
        return not self.failures

    def differing(self, other: WorkloadResult) -> list[str]:
        """The parts whose digests differ from ``other``'s (a part run by only one counts too)."""
        names = list(self.parts) + [name for name in other.parts if name not in self.parts]
        return [name for name in names if self.parts.get(name) != other.parts.get(name)]


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        raise RigError(f"unknown workload part(s): {', '.join(unknown)}", hint=f"parts: {', '.join(PARTS)}")
    if len(set(parts)) != len(parts):
        raise RigError("a workload part is named twice", hint=f"parts: {', '.join(PARTS)}")
    return tuple(parts)


def run_workload(console: GuestConsole, parts: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT_S,
                 align_ticks: int | None = None) -> WorkloadResult:
    """Run ``parts`` (all of them when empty) in the guest and parse the reply; ``align_ticks``:
    start them on a tick whose jiffies is a multiple of it (see the module's doc)."""
    chosen = check_parts(parts)
    if align_ticks is not None and align_ticks < 1:
        raise RigError(f"align_ticks must be 1 or more, not {align_ticks}")
    align = (f"align={align_ticks}",) if align_ticks is not None else ()
    started = time.monotonic()
    try:
        reply = console.request(" ".join(("workload", *align, *chosen)), timeout=timeout)
    except GuestCommandError as error:
        raise RigError(f"the guest refused the workload: {error.guest_message}",
                       hint="the guest init may be older than the rig; rebuild the initrd") from None
    host_seconds = time.monotonic() - started
    names = chosen or PARTS
    fields = reply.fields
    missing = [name for name in ("digest", *names) if name not in fields]
    if missing:
        raise RigError(f"the workload reply lacks {', '.join(missing)}: {reply.raw!r}",
                       hint="the guest init may be older than the rig; rebuild the initrd")
    return WorkloadResult(
        digest=fields["digest"],
        parts={name: fields[name] for name in names},
        part_seconds={name: reply.int_field(f"{name}_ms") / 1000 for name in names},
        seconds=reply.int_field("ms") / 1000,
        host_seconds=host_seconds,
        failures={name: fields[f"{name}_failed"] for name in names if f"{name}_failed" in fields},
        raw=reply.raw,
        start_jiffies=reply.int_field("start_jiffies") if align else None,
    )
