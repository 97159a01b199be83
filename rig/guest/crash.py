"""Guest crashes: find Oops, BUG and panic text on the console and decode it against vmlinux.

2.4 has no kallsyms: the kernel prints bare addresses and ksymoops turned them into
``function+offset/size`` on the host.  This module does the same for the formats of 2.4.20's
``arch/i386/kernel/traps.c`` (``die``, ``show_registers``, ``show_trace``), ``arch/i386/mm/fault.c``
and ``kernel/panic.c``:

* :func:`parse_crashes` — pure: console text in, :class:`KernelCrash` records out;
* :func:`decode` — addresses as ``function+0xoff/0xsize`` (or the component repository), and the
  ``Code:`` bytes (2.4.20 prints 20 bytes starting at EIP) disassembled and compared with vmlinux;
* :class:`ConsoleWatch` — what a task appended to the console log; raises :class:`GuestCrashed`;
* :func:`keep_crash` / :func:`last_crash` — a copy of the log and a JSON summary for ``invoke status``.
"""
from __future__ import annotations

import bisect
import enum
import json
import os
import re
import shutil
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import capstone

from rig.errors import RigError
from rig.splicer import repository
from rig.splicer.image import KernelImage, Symbol

UD2 = b"\x0f\x0b"
BUG_RECORD = struct.Struct("<HI")  # 2.4.20 BUG(): ud2; .word __LINE__; .long __FILE__ (asm-i386/page.h)

# The strings 2.4.20 passes to die(): traps.c (DO_ERROR*, GPF, cache flush) and fault.c ("Oops").
DIE_STRINGS = frozenset({
    "Oops", "divide error", "int3", "overflow", "bounds", "invalid operand", "device not available",
    "double fault", "coprocessor segment overrun", "invalid TSS", "segment not present", "stack segment",
    "alignment check", "general protection fault", "cache flush denied",
})
# 2.4.20's fixed panic messages (kernel/exit.c do_exit): restored exactly when the log doubled a character.
KNOWN_PANICS = ("Attempted to kill init!", "Aiee, killing interrupt handler!", "Attempted to kill the idle task!")
BAD_BUG_FILE = "<bad filename>"  # handle_BUG found ud2 but no BUG() record after it
_PANIC_REACH = 4                 # unrelated lines allowed between an oops and the panic it caused


# QEMU's console log doubles characters: its chardev logs a write that failed with EAGAIN (the host read the
# socket slower than the guest printed: an oops is such a burst), then logs it again when the UART retries.
# Nothing is ever dropped, and the socket stream itself is exact; but the log file is what a task can still
# read after the guest died, so it is read leniently.
def _literal(text: str) -> str:
    """Regex for printk literal text: any character may come doubled, a space is any run of blanks."""
    return "".join(r"\s+" if char == " " else re.escape(char) + "+" for char in text)


_FIELDS = {"{hex}": r"([0-9a-f]{4,10})", "{num}": r"(\d+)", "{text}": r"(.*?)", "{rest}": r"(.*)$"}


def _lenient(template: str) -> re.Pattern[str]:
    """A regex for a printk format as QEMU's console log has it, now and then with a character doubled
    ("stackkpage", "pid: 1,,"). ``{hex}``, ``{num}``, ``{text}``, ``{rest}`` and ``{alt:A|B}``
    are fields, ``^``/``$`` anchors; the rest is literal text, matched by :func:`_literal`."""
    parts = []
    for token in re.split(r"(\{[^}]*\}|\^|\$)", template):
        if token in _FIELDS:
            parts.append(_FIELDS[token])
        elif token.startswith("{alt:"):
            parts.append("(" + "|".join(_literal(choice) for choice in token[5:-1].split("|")) + ")")
        elif token in ("^", "$"):
            parts.append(token)
        else:
            parts.append(_literal(token))
    return re.compile("".join(parts))


@cache
def _literal_re(text: str) -> re.Pattern[str]:
    return re.compile(_literal(text))


def reads_as(logged: str, text: str) -> bool:
    """``logged`` is ``text``, but for characters the console log doubled ("initt" reads as "init")."""
    return _literal_re(text).fullmatch(logged) is not None


def _canonical(text: str, choices: Iterable[str]) -> str | None:
    """Which of ``choices`` ``text`` is, read leniently (None: none of them)."""
    return next((choice for choice in choices if reads_as(text, choice)), None)


# printk level markers show up literally after bust_spinlocks' " " (" <0>Kernel panic: ...").
_LEVEL = re.compile(r"^(?:\s*<+[0-7]+>+)+")
_FAULT = _lenient("Unable to handle kernel {alt:NULL pointer dereference|paging request} at virtual address {hex}")
_BUG = _lenient("kernel BUG at {text}:{num}!")
_BUG_HEADER = _lenient("kernel BUG in header file at line {num}")
_BUG_BARE = _lenient("^Kernel BUG$")
_DIE = re.compile(r"^([A-Za-z][A-Za-z0-9 ]*?):+\s+([0-9a-f]{4,6})$")
_PANIC = _lenient("Kernel panic: {rest}")
_NOT_SYNCING = _lenient("^{alt:In interrupt handler|In idle task} - not syncing")
_REBOOT = _lenient("^Rebooting in {num} seconds")
_CPU = _lenient("^CPU: {num}$")
_EIP = _lenient("^EIP: {hex}:[<{hex}>]{rest}")
_EFLAGS = _lenient("^EFLAGS: {hex}")
_REGISTER_NAMES = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "ds", "es", "ss")
_REGISTER = re.compile(r"\b(" + "|".join(_literal(name) for name in _REGISTER_NAMES) + r"):+\s+([0-9a-f]{4,10})\b")
_PROCESS = _lenient("^Process {text} (pid: {num}, stackpage={hex})")
_PRINTING_EIP = _lenient("^printing eip:$")
_STACK = _lenient("^Stack:{rest}")
_TRACE = _lenient("^Call Trace:{rest}")
_CODE = _lenient("^Code:{rest}")
_BAD_EIP = _lenient("Bad EIP value")
_WORDS = re.compile(r"^(?:[0-9a-f]{8,10}\s*)+$")
_TRACE_ADDRESS = _lenient("[<{hex}>]")
_PDE = _lenient("^*{alt:pde|pte} = {hex}$")
_HEX_EIP = re.compile(r"^[0-9a-f]{8,10}$")


class CrashKind(enum.Enum):
    BUG = "BUG"                                   # kernel BUG at FILE:LINE! (a real BUG() record)
    NULL_POINTER = "NULL pointer dereference"     # fault.c, address below one page
    PAGING = "paging request"                     # fault.c, any other bad kernel address
    TRAP = "trap"                                 # die() for another exception: invalid operand, GPF...
    PANIC = "panic"                               # Kernel panic: with no oops before it


@dataclass(frozen=True)
class KernelCrash:
    """One oops/BUG/panic as the guest printed it (addresses not decoded yet)."""

    kind: CrashKind
    trap: str | None = None              # die()'s string: "Oops", "invalid operand", ...
    error_code: int | None = None
    fault_address: int | None = None     # fault.c: the bad virtual address (cr2)
    bug_location: str | None = None      # "FILE:LINE" as handle_BUG printed it
    eip: int | None = None
    cs: int | None = None
    tainted: str | None = None           # "Not tainted" / "Tainted: P"
    eflags: int | None = None
    cpu: int | None = None
    registers: dict[str, int] = field(default_factory=dict)
    process: str | None = None
    pid: int | None = None
    stack: tuple[int, ...] = ()
    call_trace: tuple[int, ...] = ()
    code: bytes = b""
    bad_eip: bool = False                # "Code:  Bad EIP value."
    page_tables: dict[str, int] = field(default_factory=dict)  # *pde / *pte
    panic: str | None = None
    panic_notes: tuple[str, ...] = ()    # "In interrupt handler - not syncing", "Rebooting in 1 seconds"
    garbled: tuple[str, ...] = ()        # values the console log mangled beyond repair (left out above)
    eip_readings: tuple[int, ...] = ()   # what a garbled EIP may have been (decode() picks by the code bytes)
    raw: str = ""                        # the console lines of this crash, as printed

    @property
    def headline(self) -> str:
        """The line that names the crash, as 2.4.20 words it."""
        if self.kind in (CrashKind.NULL_POINTER, CrashKind.PAGING):
            address = f"{self.fault_address:08x}" if self.fault_address is not None else "(garbled)"
            return f"Unable to handle kernel {self.kind.value} at virtual address {address}"
        if self.kind is CrashKind.BUG:
            return f"kernel BUG at {self.bug_location}!"
        if self.kind is CrashKind.TRAP:
            return self.die_line
        return f"Kernel panic: {self.panic}"

    @property
    def die_line(self) -> str:
        """die()'s own line, "invalid operand: 0000" ("Oops: 0002" for a page fault)."""
        if self.trap is None and self.kind is CrashKind.TRAP:
            return "an oops whose first line was garbled in the console log"
        code = f"{self.error_code:04x}" if self.error_code is not None else "(garbled)"
        return f"{self.trap or 'Oops'}: {code}"

    @property
    def died(self) -> bool:
        """The kernel panicked: the guest is gone (with panic=1 and -no-reboot QEMU exits)."""
        return self.panic is not None

    @property
    def bare_ud2(self) -> bool:
        """handle_BUG read garbage after a ud2 that was no BUG(): its "kernel BUG" line is noise."""
        return self.bug_location is not None and _literal_re(BAD_BUG_FILE).match(self.bug_location) is not None

    def summary(self) -> str:
        """One line: what, who, and whether the kernel died."""
        parts = [self.headline]
        if self.process is not None:
            parts.append(f"process {self.process} (pid {self.pid})")
        if self.panic is not None and self.kind is not CrashKind.PANIC:
            parts.append(f"Kernel panic: {self.panic}")
        return "; ".join(parts)


# ---- parsing ---------------------------------------------------------------------------------

def clean_line(line: str) -> str:
    """A console line without CRs, surrounding blanks and literal printk level markers."""
    return _LEVEL.sub("", line.replace("\r", "").strip()).strip()


@dataclass
class _Draft:
    """A crash being read line by line."""

    first: int                    # index of its headline among the console lines
    kind: CrashKind | None = None
    fields: dict[str, object] = field(default_factory=dict)
    registers: dict[str, int] = field(default_factory=dict)
    page_tables: dict[str, int] = field(default_factory=dict)
    stack: list[int] = field(default_factory=list)
    trace: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    garbled: list[str] = field(default_factory=list)
    printed_eip: int | None = None
    eip_readings: tuple[int, ...] = ()
    last: int = 0                 # index of the last line taken
    section: str = ""             # "stack" / "trace": which continuation lines belong here
    idle: int = 0                 # unrelated non-blank lines since the last one taken
    done: bool = False            # the reboot line: nothing of this crash can follow

    def has(self, name: str) -> bool:
        return self.fields.get(name) is not None


def parse_crashes(text: str) -> list[KernelCrash]:
    """Every oops, BUG and panic in ``text`` (console output), in order."""
    lines = text.replace("\r", "").split("\n")  # the 2.4 serial console ends lines "\n\r"
    crashes: list[KernelCrash] = []
    draft: _Draft | None = None
    for index, raw in enumerate(lines):
        line = clean_line(raw)
        started = _start(line, draft, index)
        if started is not None:
            if draft is not None and started is not draft:
                crashes.append(_finish(draft, lines))
            draft = started
        elif draft is None or not _body(line, draft):
            if draft is not None and line:
                draft.idle += 1
                if draft.idle > _PANIC_REACH or draft.done:
                    crashes.append(_finish(draft, lines))
                    draft = None
            continue
        draft.last, draft.idle = index, 0
    if draft is not None:
        crashes.append(_finish(draft, lines))
    return crashes


def _start(line: str, draft: _Draft | None, index: int) -> _Draft | None:
    """A draft the line belongs to as a headline (a new one, or ``draft`` it completes), else None."""
    if match := _FAULT.search(line):
        kind = CrashKind.NULL_POINTER if match.group(1).startswith("N") else CrashKind.PAGING
        return _Draft(index, kind=kind, fields={"fault_address": _hex(match.group(2), 8)})
    if match := _BUG.search(line):
        return _Draft(index, kind=CrashKind.BUG, fields={"bug_location": f"{match.group(1)}:{match.group(2)}"})
    if match := _BUG_HEADER.search(line):
        return _Draft(index, kind=CrashKind.BUG, fields={"bug_location": f"header file:{match.group(1)}"})
    if _BUG_BARE.match(line):
        return _Draft(index, kind=CrashKind.BUG, fields={"bug_location": "(no file and line)"})
    if (match := _DIE.match(line)) and (trap := _canonical(match.group(1), DIE_STRINGS)):
        return _die_line(draft, index, trap, _hex(match.group(2), 4))
    if match := _PANIC.search(line):
        message = match.group(1).strip()
        return _panic_line(draft, index, _canonical(message, KNOWN_PANICS) or message)
    if _EIP.match(line) and (draft is None or draft.has("eip") or draft.kind is CrashKind.PANIC):
        headless = _Draft(index, kind=CrashKind.TRAP)  # a register dump whose first line did not arrive intact
        _read_dump_head(line, headless)
        return headless
    return None


def _die_line(draft: _Draft | None, index: int, trap: str, error_code: int | None) -> _Draft:
    """die()'s "STR: CODE" ends a fault/BUG preamble, or starts a crash of its own."""
    if draft is not None and not draft.has("trap") and not draft.has("eip") and draft.kind is not CrashKind.PANIC:
        draft.fields.update(trap=trap, error_code=error_code)
        return draft
    return _Draft(index, kind=CrashKind.TRAP, fields={"trap": trap, "error_code": error_code})


def _panic_line(draft: _Draft | None, index: int, message: str) -> _Draft:
    """A panic right after an oops is that oops' outcome (do_exit of init, of an interrupt)."""
    if draft is not None and not draft.has("panic") and draft.idle <= _PANIC_REACH:
        draft.fields["panic"] = message
        return draft
    return _Draft(index, kind=CrashKind.PANIC, fields={"panic": message})


def _body(line: str, draft: _Draft) -> bool:
    """Take one line of the register dump / trace / panic tail into ``draft``; False if not one."""
    if not line:
        return False  # blank lines separate nothing in a dump ("Call Trace" ends with one)
    if draft.section and (_WORDS.match(line) or line.startswith("[")):
        return _continuation(line, draft)
    draft.section = ""
    for reader in (_read_dump_head, _read_registers, _read_process, _read_stack_trace_code, _read_tail):
        if reader(line, draft):
            return True
    return False


def _continuation(line: str, draft: _Draft) -> bool:
    if draft.section == "stack" and _WORDS.match(line):
        draft.stack.extend(_words(line.split(), draft, "a stack word"))
        return True
    if draft.section == "trace" and line.startswith("["):
        draft.trace.extend(_words(_TRACE_ADDRESS.findall(line), draft, "a call trace address"))
        return True
    return False


def _read_dump_head(line: str, draft: _Draft) -> bool:
    if _PRINTING_EIP.match(line):
        return True
    if _HEX_EIP.match(line) and not draft.has("eip"):
        draft.printed_eip = _hex(line, 8)  # fault.c prints EIP bare before die(): a second copy
        return True
    if match := _PDE.match(line):
        table = _canonical(match.group(1), ("pde", "pte")) or "pde"
        if (value := _hex(match.group(2), 8)) is not None:
            draft.page_tables[table] = value
    elif match := _CPU.match(line):
        draft.fields["cpu"] = int(match.group(1))
    elif match := _EIP.match(line):
        draft.fields.update(cs=_hex(match.group(1), 4), eip=_hex(match.group(2), 8),
                            tainted=match.group(3).strip() or None)
        if draft.fields["eip"] is None:
            draft.garbled.append("EIP")
            draft.eip_readings = _readings(match.group(2), 8)
    elif match := _EFLAGS.match(line):
        draft.fields["eflags"] = _hex(match.group(1), 8)
    else:
        return False
    return True


def _read_registers(line: str, draft: _Draft) -> bool:
    pairs = _REGISTER.findall(line)
    if len(pairs) < 3:  # each dump line has 3 or 4 registers; fewer is not one
        return False
    for printed, text in pairs:
        name = _canonical(printed, _REGISTER_NAMES) or printed
        value = _hex(text, 4 if name in ("ds", "es", "ss") else 8)
        if value is None:
            draft.garbled.append(name)
        else:
            draft.registers[name] = value
    return True


def _read_process(line: str, draft: _Draft) -> bool:
    match = _PROCESS.match(line)
    if not match:
        return False
    draft.fields.update(process=match.group(1), pid=int(match.group(2)))
    return True


def _read_stack_trace_code(line: str, draft: _Draft) -> bool:
    if match := _STACK.match(line):
        draft.stack.extend(_words(match.group(1).split(), draft, "a stack word"))
        draft.section = "stack"
    elif match := _TRACE.match(line):
        draft.trace.extend(_words(_TRACE_ADDRESS.findall(match.group(1)), draft, "a call trace address"))
        draft.section = "trace"
    elif match := _CODE.match(line):
        bad_eip = _BAD_EIP.search(match.group(1))
        printed = match.group(1)[:bad_eip.start()] if bad_eip else match.group(1)
        draft.fields["code"] = _code_bytes(printed.split(), draft)
        draft.fields["bad_eip"] = bad_eip is not None
    else:
        return False
    return True


def _read_tail(line: str, draft: _Draft) -> bool:
    if match := _NOT_SYNCING.match(line):
        where = _canonical(match.group(1), ("In interrupt handler", "In idle task"))
        draft.notes.append(f"{where} - not syncing")
    elif match := _REBOOT.match(line):
        draft.notes.append(f"Rebooting in {match.group(1)} seconds")
        draft.done = True
    else:
        return False
    return True


def _hex(text: str, width: int) -> int | None:
    """A ``width``-digit hex value as logged, repaired when the log doubled a character or two and only one
    reading is possible ("ab03b9aa2"); None when it could be read two ways ("00118") or is cut short."""
    if not width <= len(text) <= width + 2:
        return None
    readings = _undoubled(text, len(text) - width)
    return int(readings.pop(), 16) if len(readings) == 1 else None


def _readings(text: str, width: int) -> tuple[int, ...]:
    """Every value a logged hex number may be (several when doubled characters make it ambiguous)."""
    if not width <= len(text) <= width + 2:
        return ()
    return tuple(sorted(int(reading, 16) for reading in _undoubled(text, len(text) - width)))


def _undoubled(text: str, extra: int) -> set[str]:
    """Every string ``text`` can be with ``extra`` doubled characters taken out."""
    if extra == 0:
        return {text}
    return {reading for i in range(1, len(text)) if text[i] == text[i - 1]
            for reading in _undoubled(text[:i] + text[i + 1:], extra - 1)}


def _words(texts: Sequence[str], draft: _Draft, what: str) -> list[int]:
    values = [_hex(text, 8) for text in texts]
    if None in values:
        draft.garbled.append(what)
    return [value for value in values if value is not None]


def _code_bytes(tokens: Sequence[str], draft: _Draft) -> bytes:
    """The Code: bytes up to the first one the serial line mangled (what follows would be misplaced)."""
    code = bytearray()
    for token in tokens:
        value = _hex(token, 2)
        if value is None:
            draft.garbled.append("code bytes")
            break
        code.append(value)
    return bytes(code)


def _finish(draft: _Draft, lines: Sequence[str]) -> KernelCrash:
    fields = dict(draft.fields)
    if fields.get("eip") is None and draft.printed_eip is not None:
        fields["eip"] = draft.printed_eip  # the EIP: line was garbled; fault.c's copy was not
        draft.garbled = [what for what in draft.garbled if what != "EIP"]
    elif fields.get("eip") is None and len(draft.eip_readings) > 1:
        fields["eip_readings"] = draft.eip_readings  # decode() picks the one vmlinux's code agrees with
    kind = draft.kind or CrashKind.PANIC
    if kind is CrashKind.BUG and _literal_re(BAD_BUG_FILE).match(str(fields.get("bug_location", ""))):
        kind = CrashKind.TRAP  # a bare ud2: the exception ("invalid operand") is what happened
    return KernelCrash(kind=kind, registers=dict(draft.registers), page_tables=dict(draft.page_tables),
                       garbled=tuple(dict.fromkeys(draft.garbled)),
                       stack=tuple(draft.stack), call_trace=tuple(draft.trace), panic_notes=tuple(draft.notes),
                       raw="\n".join(lines[draft.first:max(draft.first, draft.last) + 1]),
                       **fields)  # type: ignore[arg-type]


# ---- decoding --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """An address as ksymoops showed it, or where else it points."""

    address: int
    region: str                # "kernel", "repository" or "unknown"
    symbol: str | None = None
    offset: int = 0
    size: int = 0
    detail: str = ""           # repository: which part ("patch area of slot 3+0x10")
    span: tuple[int, int] = (repository.DEFAULT_BASE, repository.DEFAULT_BASE + repository.DEFAULT_SIZE)

    def __str__(self) -> str:
        if self.region == "kernel":
            return f"{self.symbol}+{self.offset:#x}/{self.size:#x}"
        if self.region == "repository":
            return f"in the component repository (0x{self.span[0]:08X}-0x{self.span[1]:08X})" + \
                (f": {self.detail}" if self.detail else "")
        return "unknown"

    @property
    def phrase(self) -> str:
        """For a sentence: "at sys_getpid+0x0/0xe", "in the component repository (...)", "at c8000000 (unknown)"."""
        if self.region == "repository":
            return str(self)
        return f"at {self}" if self.region == "kernel" else f"at {self.address:08x} (unknown)"


@dataclass(frozen=True)
class CodeLine:
    address: int
    data: bytes
    text: str

    def render(self, mark: bool = False) -> str:
        return f"{self.address:08x}  {self.data.hex(' '):<24} {self.text}" + ("   <=====" if mark else "")


@dataclass(frozen=True)
class DecodedCrash:
    crash: KernelCrash
    eip: Location | None
    trace: tuple[Location, ...]
    code: tuple[CodeLine, ...]                 # the guest's bytes at EIP (first one faulted)
    code_changed: tuple[int, ...] | None       # offsets from EIP where they differ from vmlinux
    image_code: tuple[CodeLine, ...] = ()      # vmlinux's bytes there, when they differ
    eip_chosen: bool = False                   # EIP was garbled in the log; the reading matching vmlinux's code

    def summary(self) -> str:
        """One line naming the crash and where it happened."""
        crash = self.crash
        where = f" {self.eip.phrase}" if self.eip is not None else ""
        who = f" in {crash.process} (pid {crash.pid})" if crash.process is not None else ""
        died = f"; Kernel panic: {crash.panic}" if crash.panic is not None and crash.kind is not CrashKind.PANIC else ""
        return f"{crash.headline}{where}{who}{died}"


class _SymbolMap:
    """Code symbols by address, for lookups the way ksymoops used System.map."""

    def __init__(self, image: KernelImage) -> None:
        best: dict[int, Symbol] = {}
        for sym in image.symbols:
            section = image.sections.get(sym.section)
            if section is None or not section.executable:
                continue
            old = best.get(sym.address)
            if old is None or _rank(sym) < _rank(old):
                best[sym.address] = sym
        self.image = image
        self.symbols = [best[a] for a in sorted(best)]
        self.starts = [s.address for s in self.symbols]

    def lookup(self, address: int) -> tuple[Symbol, int] | None:
        """(symbol, size): the sized function holding ``address``, else the closest code symbol before it,
        sized up to the next one (entry.S labels such as system_call have no ELF size)."""
        try:
            sym = self.image.function_at(address)
            return sym, sym.size
        except RigError:
            pass
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        sym = self.symbols[i]
        section = self.image.sections[sym.section]
        if not section.contains(address):
            return None
        end = self.starts[i + 1] if i + 1 < len(self.starts) else section.end
        return sym, min(end, section.end) - sym.address


def _rank(sym: Symbol) -> tuple[int, int, str]:
    """Which of several symbols at one address names it: a sized function, then a name without '_'."""
    return (0 if sym.kind == "FUNC" and sym.size else 1, 1 if sym.name.startswith("_") else 0, sym.name)


@cache
def _symbol_map(image: KernelImage) -> _SymbolMap:
    return _SymbolMap(image)


def _repository_part(address: int, layout: repository.RepositoryLayout) -> str:
    """Which part of the repository holds ``address`` (the code parts are where an EIP can be)."""
    offset = address - layout.base
    if repository.HANDLER_OFFSET <= offset < repository.INT3_HANDLER_OFFSET:
        return f"trap handler stub+{offset - repository.HANDLER_OFFSET:#x}"
    if repository.INT3_HANDLER_OFFSET <= offset < repository.HANDLER_OFFSET + repository.HANDLER_MAX:
        return f"int3 handler stub+{offset - repository.INT3_HANDLER_OFFSET:#x}"
    if layout.patch_area(0) <= address < layout.patch_area(layout.slots):
        slot, within = divmod(address - layout.patch_area(0), repository.PATCH_AREA_SIZE)
        return f"patch area of slot {slot}+{within:#x}"
    if repository.BENCH_SCRATCH_OFFSET <= offset < repository.COMPONENT_TABLE_OFFSET:
        return f"bench scratch+{offset - repository.BENCH_SCRATCH_OFFSET:#x}"
    if offset >= repository.COMPONENT_REGION_OFFSET:
        return f"component region+{offset - repository.COMPONENT_REGION_OFFSET:#x}"
    return f"repository data+{offset:#x}"


def locate(address: int, image: KernelImage, layout: repository.RepositoryLayout | None = None) -> Location:
    """``address`` as function+0xoff/0xsize, a place in the component repository, or unknown."""
    layout = layout or repository.RepositoryLayout()
    if layout.contains(address):
        return Location(address, "repository", detail=_repository_part(address, layout),
                        span=(layout.base, layout.base + layout.size))
    found = _symbol_map(image).lookup(address)
    if found is None:
        return Location(address, "unknown")
    sym, size = found
    return Location(address, "kernel", sym.name, address - sym.address, size)


_md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)


def disassemble(code: bytes, address: int) -> tuple[CodeLine, ...]:
    """Linear disassembly; an undecodable byte is shown as "(bad)", a cut-off last instruction as such."""
    lines: list[CodeLine] = []
    offset = 0
    while offset < len(code):
        insn = _decode_one(code[offset:], address + offset)
        if insn is None:
            lines.append(CodeLine(address + offset, code[offset:offset + 1], "(bad)"))
            offset += 1
        elif insn.size > len(code) - offset:
            lines.append(CodeLine(address + offset, code[offset:], "(cut off: the oops prints 20 bytes)"))
            break
        else:
            lines.append(CodeLine(insn.address, bytes(insn.bytes), f"{insn.mnemonic} {insn.op_str}".strip()))
            offset += insn.size
    return tuple(lines)


def _decode_one(data: bytes, address: int) -> capstone.CsInsn | None:
    # Pad so an instruction cut off by the end of the dump still decodes (and shows as cut off).
    return next(_md.disasm(data + bytes(15), address, count=1), None)


def _image_bytes(image: KernelImage, address: int, length: int) -> bytes | None:
    try:
        return image.text_bytes(address, length)
    except RigError:
        return None


def _disassemble_crash_code(crash: KernelCrash, eip: int) -> tuple[CodeLine, ...]:
    """The Code: bytes; after the ud2 of a real BUG() its record (line, file pointer) is data, not code."""
    code = crash.code
    if crash.kind is not CrashKind.BUG or code[:2] != UD2 or len(code) < 2 + BUG_RECORD.size:
        return disassemble(code, eip)
    line, file = BUG_RECORD.unpack_from(code, 2)
    record = CodeLine(eip + 2, code[2:2 + BUG_RECORD.size], f"(BUG() record: line {line}, file name at {file:#010x})")
    end = 2 + BUG_RECORD.size
    return (CodeLine(eip, UD2, "ud2"), record, *disassemble(code[end:], eip + end))


def decode(crash: KernelCrash, image: KernelImage, layout: repository.RepositoryLayout | None = None) -> DecodedCrash:
    """Decode ``crash``'s addresses and code bytes against ``image`` (the guest's vmlinux)."""
    address = crash.eip if crash.eip is not None else _choose_eip(crash, image)
    eip = locate(address, image, layout) if address is not None else None
    trace = tuple(locate(address, image, layout) for address in crash.call_trace)
    chosen = crash.eip is None and address is not None
    if address is None or not crash.code:
        return DecodedCrash(crash, eip, trace, (), None, eip_chosen=chosen)
    code = _disassemble_crash_code(crash, address)
    original = _image_bytes(image, address, len(crash.code))
    if original is None:
        return DecodedCrash(crash, eip, trace, code, None, eip_chosen=chosen)
    changed = tuple(i for i, (a, b) in enumerate(zip(crash.code, original)) if a != b)
    return DecodedCrash(crash, eip, trace, code, changed, disassemble(original, address) if changed else (),
                        eip_chosen=chosen)


def _choose_eip(crash: KernelCrash, image: KernelImage) -> int | None:
    """Of the readings of a garbled EIP, the one where vmlinux holds (most of) the Code: bytes the oops
    printed from EIP; None unless exactly one agrees on at least half of them."""
    def agreement(address: int) -> int:
        original = _image_bytes(image, address, len(crash.code)) or b""
        return sum(a == b for a, b in zip(crash.code, original))

    scores = sorted(((agreement(address), address) for address in crash.eip_readings), reverse=True)
    if not scores or 2 * scores[0][0] < len(crash.code) or (len(scores) > 1 and scores[1][0] == scores[0][0]):
        return None
    return scores[0][1]


def kernel_banner(image: KernelImage) -> str | None:
    """vmlinux's ``linux_banner`` ("Linux version 2.4.20 (...) #1 <build time>"), which the guest prints first."""
    try:
        pointer = image.read_u32(image.symbol("linux_banner").address)
    except RigError:
        return None
    section = image.section_at(pointer) if pointer is not None else None
    if section is None or pointer is None:
        return None
    start = pointer - section.address
    end = section.data.find(b"\0", start)
    return section.data[start:end if end >= 0 else None].decode(errors="replace").strip()


def console_banner(text: str) -> str | None:
    """The kernel's banner line in a console log, if the log reaches back to the boot."""
    for line in text.replace("\r", "").split("\n"):
        if line.strip().startswith("Linux version "):
            return line.strip()
    return None


# ---- rendering -------------------------------------------------------------------------------

def render_lines(decoded: DecodedCrash, splices: Sequence[str] = (), log: Path | str | None = None,
                 brief: bool = False) -> list[str]:
    """The decoded crash as plain text lines, in ksymoops' order: what, EIP, registers, trace, code.
    ``brief`` (for an error message) leaves out the registers and all code but the faulting instruction."""
    crash = decoded.crash
    lines = [_title(crash)]
    if decoded.eip is not None:
        chosen = "    (garbled in the log; the reading whose vmlinux code matches)" if decoded.eip_chosen else ""
        lines.append(f"EIP:    {crash.cs or 0:04x}:[<{decoded.eip.address:08x}>] {decoded.eip}"
                     + (f"    ({crash.tainted})" if crash.tainted else "") + chosen)
    if crash.process is not None:
        lines.append(f"Process {crash.process} (pid {crash.pid})"
                     + (f"   EFLAGS: {crash.eflags:08x}" if crash.eflags is not None else ""))
    if not brief:
        lines += _register_lines(crash.registers)
    if crash.garbled:
        lines.append(f"garbled in the console log, left out: {', '.join(crash.garbled)}")
    if decoded.trace:
        lines.append("Call Trace:")
        lines += [f"  [<{loc.address:08x}>] {loc}" for loc in decoded.trace]
    lines += _code_lines(decoded, brief)
    if crash.panic is not None:
        lines.append(f"Kernel panic: {crash.panic}")
    lines += list(crash.panic_notes)
    if splices:
        lines.append("Splices live before the crash:")
        lines += [f"  {splice}" for splice in splices]
    if log is not None:
        lines.append(f"Console log: {log}")
    return lines


def _title(crash: KernelCrash) -> str:
    if crash.kind in (CrashKind.NULL_POINTER, CrashKind.PAGING):
        return f"{crash.headline} ({crash.die_line}, {_fault_access(crash)})"
    if crash.kind is CrashKind.BUG and crash.trap:
        return f"{crash.headline} ({crash.die_line})"
    if crash.bare_ud2:
        noise = f"kernel BUG at {crash.bug_location}!"
        return f"{crash.headline} (a ud2 with no BUG() record: handle_BUG printed '{noise}')"
    return crash.headline


def _fault_access(crash: KernelCrash) -> str:
    """The i386 page-fault error code in words (bit 0 present, bit 1 write, bit 2 user mode)."""
    code = crash.error_code or 0
    access = "write" if code & 2 else "read"
    page = "a protection violation" if code & 1 else "a not-present page"
    return f"{access}, {page}, {'user' if code & 4 else 'kernel'} mode"


def _register_lines(registers: dict[str, int]) -> list[str]:
    rows = (("eax", "ebx", "ecx", "edx"), ("esi", "edi", "ebp", "esp"), ("ds", "es", "ss"))
    lines = []
    for row in rows:
        cells = [f"{name}: {registers[name]:0{4 if len(row) == 3 else 8}x}" for name in row if name in registers]
        if cells:
            lines.append("   ".join(cells))
    return lines


def _code_lines(decoded: DecodedCrash, brief: bool = False) -> list[str]:
    crash = decoded.crash
    if crash.bad_eip:
        return ["Code: Bad EIP value (the kernel could not read the bytes at EIP)"]
    if not decoded.code:
        return []
    shown = decoded.code[:1] if brief else decoded.code
    lines = ["Code (the guest's bytes at EIP):"]
    lines += [f"  {line.render(mark=i == 0)}" for i, line in enumerate(shown)]
    if decoded.code_changed:
        first, last = decoded.code_changed[0], decoded.code_changed[-1]
        lines.append(f"  the guest's text differs from vmlinux at EIP+{first:#x}..+{last:#x} "
                     f"(changed at run time: a splice, or memory corruption); vmlinux has:")
        lines += [f"  {line.render()}" for line in decoded.image_code[:1 if brief else 3]]
    return lines


# ---- the error, the kept log, the watch ------------------------------------------------------

class GuestCrashed(RigError):
    """The guest oopsed or died while a command ran; carries the decoded crash."""

    def __init__(self, decoded: DecodedCrash, splices: Sequence[str] = (), log: Path | None = None,
                 kept: bool = False) -> None:
        self.decoded = decoded
        self.crash = decoded.crash
        self.splices = tuple(splices)
        self.log = log
        state = "died" if decoded.crash.died else "oopsed (the kernel still runs, the process was killed)"
        body = render_lines(decoded, self.splices, brief=True)[1:]
        message = f"the guest {state}: {decoded.summary()}\n" + "\n".join(f"  {line}" for line in body)
        if log is None:
            hint = "the console log was not kept"
        elif kept:
            hint = f"the console log is kept at {log}; `invoke status` shows the last crash"
        else:
            hint = f"the console log: {log}"
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class CrashRecord:
    """What :func:`keep_crash` wrote next to the kept log (read back by :func:`last_crash`)."""

    at: str                   # UTC, ISO 8601
    kind: str
    summary: str              # DecodedCrash.summary()
    eip: str | None
    call_trace: list[str]
    panic: str | None
    process: str | None
    pid: int | None
    splices: list[str]
    log: str                  # the kept copy of the console log
    report: list[str]         # render_lines()

    def status_line(self) -> str:
        return f"the last guest crashed at {self.at}: {self.summary}, log: {self.log}"


def keep_crash(console_log: Path, crash_dir: Path, decoded: DecodedCrash,
               splices: Sequence[str] = ()) -> CrashRecord:
    """Copy the console log into ``crash_dir`` with a JSON summary beside it; returns the summary."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    stem = f"crash-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    kept = crash_dir / f"{stem}.log"
    shutil.copyfile(console_log, kept)
    crash = decoded.crash
    record = CrashRecord(at=now.isoformat(timespec="seconds"), kind=crash.kind.value, summary=decoded.summary(),
                         eip=str(decoded.eip) if decoded.eip is not None else None,
                         call_trace=[f"[<{loc.address:08x}>] {loc}" for loc in decoded.trace],
                         panic=crash.panic, process=crash.process, pid=crash.pid, splices=list(splices),
                         log=str(kept), report=render_lines(decoded, splices, kept))
    (crash_dir / f"{stem}.json").write_text(json.dumps(asdict(record), indent=2))
    return record


def last_crash(crash_dir: Path) -> CrashRecord | None:
    """The newest crash :func:`keep_crash` recorded in ``crash_dir`` (None if none or unreadable)."""
    records = sorted(crash_dir.glob("crash-*.json")) if crash_dir.is_dir() else []
    for path in reversed(records):
        try:
            return CrashRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # a half-written or older-format summary: try the one before
    return None


class ConsoleWatch:
    """Crashes in what the guest printed to its console log since :meth:`start`."""

    def __init__(self, path: Path, image: KernelImage, offset: int = 0, crash_dir: Path | None = None,
                 splices: Sequence[str] = (), layout: repository.RepositoryLayout | None = None,
                 inode: int | None = None) -> None:
        self.path = path
        self.image = image
        self.offset = offset
        self.inode = inode             # the log file watched; another one (a new boot) is read from 0
        self.crash_dir = crash_dir
        self.splices = list(splices)   # update when a command changes them: reported with a crash
        self.layout = layout

    @classmethod
    def start(cls, path: Path, image: KernelImage, crash_dir: Path | None = None,
              splices: Sequence[str] = (), layout: repository.RepositoryLayout | None = None) -> ConsoleWatch:
        """Watch from the log's current end (a guest not booted yet: from its start)."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            return cls(path, image, 0, crash_dir, splices, layout)
        return cls(path, image, stat.st_size, crash_dir, splices, layout, stat.st_ino)

    def text(self) -> str:
        """What was appended since the start (all of it if a new boot replaced the log: another file, or a
        shorter one)."""
        try:
            with self.path.open("rb") as stream:
                stat = os.fstat(stream.fileno())
                same = stat.st_ino == self.inode and stat.st_size >= self.offset
                stream.seek(self.offset if same else 0)
                return stream.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def crashes(self) -> list[KernelCrash]:
        return parse_crashes(self.text())

    def first_crash(self, settle_s: float = 1.5) -> KernelCrash | None:
        """The first crash since the start; waits up to ``settle_s`` for its text to be complete."""
        crashes = self.crashes()
        if not crashes:
            return None
        if not _complete(crashes[0]):
            _wait_quiet(self.path, settle_s)
            crashes = self.crashes()
        return crashes[0]

    def check(self, settle_s: float = 1.5) -> None:
        """Raise :class:`GuestCrashed` if the guest crashed since the start (keeping the log if asked)."""
        crash = self.first_crash(settle_s)
        if crash is None:
            return
        decoded = decode(crash, self.image, self.layout)
        if self.crash_dir is not None and self.path.exists():
            record = keep_crash(self.path, self.crash_dir, decoded, self.splices)
            raise GuestCrashed(decoded, self.splices, Path(record.log), kept=True)
        raise GuestCrashed(decoded, self.splices, self.path if self.path.exists() else None)

    @contextmanager
    def guard(self) -> Iterator[ConsoleWatch]:
        """Run a command under watch: a crash replaces the command's own error (timeout, console closed)
        with :class:`GuestCrashed`, and fails a command that seemed to succeed."""
        try:
            yield self
        except RigError as error:
            if isinstance(error, GuestCrashed):
                raise
            self.check()  # raises GuestCrashed, chained to the command's error
            raise
        self.check()


@contextmanager
def watch_console(path: Path, image: KernelImage, crash_dir: Path | None = None,
                  splices: Sequence[str] = ()) -> Iterator[ConsoleWatch]:
    """``with watch_console(log, image, crash_dir, splices): run the command`` — start + guard in one."""
    with ConsoleWatch.start(path, image, crash_dir, splices).guard() as watch:
        yield watch


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _complete(crash: KernelCrash) -> bool:
    """Everything the crash prints has arrived: the panic's reboot line (panic=1). Anything else may still
    be followed by more (an oops by the panic it causes), so the caller waits for the log to go quiet."""
    return any(note.startswith("Rebooting") for note in crash.panic_notes)


def _wait_quiet(path: Path, limit_s: float, quiet_s: float = 0.4) -> None:
    """Wait until the log stops growing for ``quiet_s`` (at most ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    size, since = _size(path), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now_size = _size(path)
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
