"""Command-line values, checked before a task boots or attaches to a guest.

Every check raises :class:`RigError` with what was wrong and how to write it; the tasks
turn that into a message, a hint and exit status 1 (:func:`rig.cli.render.reports_errors`).
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TypeVar

from invoke.exceptions import ParseError

from rig.errors import RigError
from rig.splicer.kinds import Mode, PatchKind, Policy

E = TypeVar("E", bound=enum.Enum)

# An offset or address as people write them: decimal, or hex with 0x. No octal-looking
# leading zeros ("08": Python's int(x, 0) refuses them, and 010 would be 8 elsewhere).
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
_BARE_HEX = re.compile(r"[0-9a-fA-F]+")
PAGE_OFFSET = 0xC0000000  # 2.4/i386: kernel addresses start here, so no function offset reaches it
U32_MAX = 0xFFFFFFFF
MAX_ICOUNT_SHIFT = 10     # QEMU's limit for -icount shift=N
USER_PROBES = (PatchKind.COUNTER, PatchKind.EMPTY)  # the other kinds are what components splice with
DISPATCHES = ("table", "vector")


def _integer(text: str) -> int | None:
    if _DECIMAL.fullmatch(text):
        return int(text)
    if _HEX.fullmatch(text):
        return int(text, 16)
    return None


def offset(text: str | None) -> int | None:
    """``--offset``: bytes from the function's start, decimal or 0x-hex."""
    if text is None:
        return None
    value = _integer(text)
    how = "an offset is a byte count from the function's start, decimal (16) or hex with 0x (0x10)"
    if value is None:
        if text.startswith("-") and _integer(text[1:]) is not None:
            raise RigError(f"--offset {text} is negative", how + "; 0 is the function's first byte")
        if _BARE_HEX.fullmatch(text):
            if text.isdigit():  # leading zero: 08, 010
                plain = text.lstrip("0") or "0"
                raise RigError(f"--offset {text} has a leading zero (octal or decimal?)",
                               f"write {plain} (decimal) or 0x{plain} (hex)")
            if int(text, 16) >= PAGE_OFFSET:
                raise RigError(f"--offset {text} is not a number: hex needs 0x, and this looks like an address",
                               f"for an absolute address use --addr 0x{text}; {how}")
            raise RigError(f"--offset {text} is not a number (hex needs 0x)", f"{how}: 0x{text}")
        raise RigError(f"--offset {text!r} is not a number", f"{how}; for an absolute address use --addr 0x...")
    if value >= PAGE_OFFSET:
        raise RigError(f"--offset {text} is a kernel address, not an offset in a function",
                       f"use --addr {value:#x} instead of --offset")
    return value


def address(text: str | None, option: str = "addr") -> int | None:
    """``--addr`` (or another ``--option``): an absolute kernel address, 0x-hex or decimal."""
    if text is None:
        return None
    flag = f"--{option}"
    value = _integer(text)
    if value is None:
        if _BARE_HEX.fullmatch(text) and not text.isdigit():
            raise RigError(f"{flag} {text} has no 0x", f"hex addresses start with 0x: {flag} 0x{text}")
        if text.isdigit():
            raise RigError(f"{flag} {text} has a leading zero (octal or decimal?)",
                           f"write the address in hex with 0x, e.g. {flag} 0xc01abc70")
        raise RigError(f"{flag} {text!r} is not an address", f"write it in hex with 0x, e.g. {flag} 0xc01abc70")
    if value > U32_MAX:
        raise RigError(f"{flag} {text} does not fit in 32 bits", "the guest is i386: addresses run up to 0xffffffff")
    return value


def whole(text: str | None, option: str, low: int, high: int | None = None) -> int | None:
    """A whole number in [low, high] for ``--option``.

    Tasks give such options a default of None, not a number: for an int default invoke converts
    the text itself and a typo ends in its ValueError traceback."""
    if text is None:
        return None
    value = _integer(text)
    span = f"from {low} to {high}" if high is not None else f"{low} or more"
    flag = f"-{option}" if len(option) == 1 else f"--{option}"  # invoke gives one-letter options no long form
    if value is None or value < low or (high is not None and value > high):
        raise RigError(f"{flag} {text} is not a whole number {span}", f"for example {flag} {low}")
    return value


def seconds(text: str | None, option: str) -> float | None:
    """A finite, positive number of seconds."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise RigError(f"--{option} {text} is not a number of seconds above 0", f"for example --{option} 30")
    return value


def finite_number(text: str, what: str) -> Decimal:
    """A decimal number (no nan, no inf); whether it fits the parameter is checked where that is
    known (the loaded component's declaration, rig.instrument.components.parse_value)."""
    how = "give a decimal number such as 0.05"
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise RigError(f"{what} = {text!r} is not a number", how) from None
    if not value.is_finite():
        raise RigError(f"{what} = {text} is not a finite number", how)
    return value


def component_variable(text: str) -> str:
    """COMPONENT.NAME, checked for its shape (whether it exists needs the guest)."""
    component, dot, name = text.partition(".")
    if not dot or not component or not name:
        raise RigError(f"{text!r} is not COMPONENT.NAME", "for example: mss_adapt.fer (see invoke components)")
    return text


def choice(enum_type: type[E], value: str, option: str, allowed: tuple[E, ...] | None = None,
           also: tuple[str, ...] = ()) -> E:
    """One of an enum's members by name (or string value), case-insensitive; ``also``: other
    words the option takes (handled by the caller), named in the hint."""
    members = allowed or tuple(enum_type)
    names = {member.name.lower(): member for member in members}
    names.update({member.value: member for member in members if isinstance(member.value, str)})
    if value.lower() not in names:
        raise RigError(f"unknown --{option} '{value}'",
                       f"one of: {' | '.join([*also, *(member.name.lower() for member in members)])}")
    return names[value.lower()]


@dataclass(frozen=True)
class SpliceArgs:
    mode: Mode
    policy: Policy | None       # None: auto
    probe: PatchKind
    offset: int | None
    address: int | None
    own_vector: bool


def splice_args(offset_text: str | None, addr_text: str | None, mode: str, policy: str, probe: str | None,
                component: str | None, dispatch: str | None) -> SpliceArgs:
    """Everything `invoke splice` takes, checked together: no option may be silently ignored."""
    mode_ = choice(Mode, mode, "mode")
    policy_ = None if policy.lower() == "auto" else choice(Policy, policy, "policy", also=("auto",))
    probe_ = choice(PatchKind, probe, "probe", USER_PROBES) if probe is not None else PatchKind.COUNTER
    if dispatch is not None and dispatch.lower() not in DISPATCHES:
        raise RigError(f"unknown --dispatch '{dispatch}'", f"one of: {' | '.join(DISPATCHES)}")
    own_vector = dispatch is not None and dispatch.lower() == "vector"
    if own_vector and mode_ is not Mode.TRAP:
        raise RigError(f"--dispatch vector is for trap splices, not --mode {mode_.name.lower()}",
                       "use --mode trap with --dispatch vector, or drop --dispatch")
    offset_, address_ = offset(offset_text), address(addr_text)
    if offset_ is not None and address_ is not None:
        raise RigError("give --offset or --addr, not both", "--offset counts from FUNC's start; --addr is absolute")
    if component is not None:
        if probe is not None:
            raise RigError(f"--probe {probe} is not taken with --component",
                           "the component's hook is what the splice runs; drop --probe")
        if own_vector:
            raise RigError("--dispatch vector is not taken with --component",
                           "component splices dispatch through the shared vector; drop --dispatch")
        if address_ is not None:
            raise RigError("--addr is not taken with --component", "use --offset (wraps) or nothing")
    return SpliceArgs(mode_, policy_, probe_, offset_, address_, own_vector)


# ---- invoke's parser ------------------------------------------------------------------------
_HELP_FLAGS = ("--help", "-h")
# A negative number is a value, never a cluster of one-letter flags (-0.5 -> -0 -. -5).
_NEGATIVE_NUMBER = re.compile(r"-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SHIELD = "\0"  # argv strings cannot hold a NUL, so a shielded token is never what a user typed


def fix_invoke_parsing() -> None:
    """Two fixes to invoke's command-line parser (3.0.3; both idempotent):

    * `invoke TASK --help` prints TASK's help even when TASK has required positional arguments:
      invoke feeds such a `--help` to the task as the value of its first positional argument
      (pyinvoke/invoke#982), so `invoke load --help` tried to load a component named "--help".
      `--help` (or `-h`, unless the task has a flag of that name) is taken as the help flag
      first, as invoke does for tasks without positional arguments; the task does not run.
    * a negative number reaches the task as a value: invoke splits `-0.5` into the flags -0, -.
      and -5 and stops with "No idea what '-.' is!", so `invoke set mss_adapt.fer -0.5` never
      got to say that fer takes 0 to 1."""
    from invoke.parser import parser as invoke_parser

    machine, parser = invoke_parser.ParseMachine, invoke_parser.Parser
    if not getattr(machine.handle, "rig_fixed", False):
        machine.handle = _help_first(machine.handle)
    if not getattr(parser.parse_argv, "rig_fixed", False):
        parser.parse_argv = _negative_numbers_are_values(parser.parse_argv)


def _help_first(handle):  # noqa: ANN001, ANN202 - invoke's ParseMachine.handle
    def patched(self, token: str) -> None:  # noqa: ANN001
        context, initial = self.context, self.initial
        if (token in _HELP_FLAGS and self.current_state == "context" and context is not None
                and context is not initial and token not in context.flags and not self.waiting_for_flag_value
                and context.missing_positional_args and token in initial.flags
                and initial.flags[token].name == "help"):
            initial.flags[token].value = context.name  # what invoke sets for `TASK --help` without positionals
            for argument in context.missing_positional_args:
                argument.value = ""  # satisfies the parser's completeness check; the task never runs
            return
        handle(self, token)

    patched.rig_fixed = True  # type: ignore[attr-defined]
    return patched


def _negative_numbers_are_values(parse_argv):  # noqa: ANN001, ANN202 - invoke's Parser.parse_argv
    def patched(self, argv: list[str]):  # noqa: ANN001, ANN202
        # Only tokens invoke would split (longer than "-5"); tasks take such values as strings.
        shielded = [_SHIELD + token if len(token) > 2 and _NEGATIVE_NUMBER.fullmatch(token) else token
                    for token in argv]
        try:
            result = parse_argv(self, shielded)
        except ParseError as error:  # its message quotes the token as typed
            error.args = tuple(a.replace(repr(_SHIELD)[1:-1], "").replace(_SHIELD, "") if isinstance(a, str) else a
                               for a in error.args)  # it may quote the token as its repr
            raise
        for context in result:
            for argument in context.args.values():
                if isinstance(argument.raw_value, str) and argument.raw_value.startswith(_SHIELD):
                    argument.value = argument.raw_value[len(_SHIELD):]
        result.unparsed = [token.removeprefix(_SHIELD) for token in result.unparsed]
        result.remainder = result.remainder.replace(_SHIELD, "")
        return result

    patched.rig_fixed = True  # type: ignore[attr-defined]
    return patched


@dataclass(frozen=True)
class SpliceRequest:
    args: SpliceArgs
    trace_mode: Mode | None     # --every-instruction: the one mode, or None for auto (trap or int3 by size)


def splice_request(funcs: list[str], offset_text: str | None, addr_text: str | None, mode: str | None, policy: str,
                   probe: str | None, component: str | None, dispatch: str | None,
                   every_instruction: bool) -> SpliceRequest:
    """`invoke splice` as a whole: one point, several entries (--func A --func B), or every
    instruction of one function; what does not fit together is refused before a guest is touched."""
    if not funcs:
        raise RigError("no function given", "invoke splice --func NAME (repeat --func to splice several)")
    auto = every_instruction and (mode is None or mode.lower() == "auto")
    args = splice_args(offset_text, addr_text, "trap" if auto or mode is None else mode, policy, probe, component,
                       dispatch)
    if every_instruction or len(funcs) > 1:
        what = "--every-instruction" if every_instruction else "several --func"
        if every_instruction and len(funcs) > 1:
            raise RigError("--every-instruction takes one --func", "trace one function at a time")
        if offset_text is not None or (addr_text is not None and not every_instruction):
            raise RigError(f"--offset/--addr is not taken with {what}",
                           "every point is chosen for you: an instruction each, or each function's entry")
        if component is not None:
            raise RigError(f"--component is not taken with {what}", "splice one function to a component")
        if every_instruction and (policy.lower() != "auto" or args.own_vector or probe is not None):
            raise RigError("--policy, --dispatch and --probe are not taken with --every-instruction",
                           "each instruction takes its own single-instruction counting splice")
    elif mode is not None and mode.lower() == "auto":
        raise RigError("--mode auto is for --every-instruction", "one of: trap | jmp | int3")
    return SpliceRequest(args, None if auto else args.mode)
