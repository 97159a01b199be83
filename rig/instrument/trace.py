"""Every-instruction tracing: a splice at every instruction boundary of a function that can take
one, and the live hit count of each, read back for an annotated disassembly (``perf annotate``
with exact counts instead of samples)."""
from __future__ import annotations

from dataclasses import dataclass

from rig.instrument.manager import Instrumenter, PointRequest
from rig.splicer.analysis import FunctionCode, Instruction
from rig.splicer.kinds import Mode, Policy

# Under "auto" the branch that fits each instruction alone: a 2-byte int $n where the instruction
# has two bytes or more, the 1-byte int3 where it has one.
AUTO = None


def every_instruction(code: FunctionCode, mode: Mode | None = AUTO) -> list[PointRequest]:
    """One point per instruction of ``code``, each replacing that instruction alone (windows of
    neighbouring points must not overlap); ``mode`` None picks trap or int3 by size."""
    return [PointRequest(code.name, _mode_for(insn, mode), Policy.SINGLE, address=insn.address)
            for insn in code.instructions if not insn.is_data]


def _mode_for(insn: Instruction, mode: Mode | None) -> Mode:
    if mode is not None:
        return mode
    return Mode.TRAP if insn.size >= 2 else Mode.INT3


@dataclass(frozen=True)
class AnnotatedLine:
    instruction: Instruction
    hits: int | None          # None: no splice at this instruction
    mode: str | None          # the live splice's mode there


def annotate(instrumenter: Instrumenter, function: str, address: int | None = None
             ) -> tuple[FunctionCode, list[AnnotatedLine]]:
    """``function``'s instructions with the hit count of the live splice at each (read live);
    ``address`` picks one of several static functions of that name."""
    code, _ = instrumenter.resolve_point(function, address=address)
    hits = instrumenter.hits_in(code.start, code.end)
    return code, [AnnotatedLine(insn, *(hits.get(insn.address) or (None, None)))
                  for insn in code.instructions if not insn.is_data]
