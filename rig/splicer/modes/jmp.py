"""jmp: ``jmp rel32`` (5 bytes) straight to the patch; where 5 bytes cannot be taken, a 2-byte
``jmp rel8`` into the alignment padding gcc leaves between functions, hopping on in ``jmp rel8``
steps until a gap holds the final ``jmp rel32`` (GILK's and KernInst's springboards)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import iced_x86 as ix

from rig.splicer import springboard as sb
from rig.splicer.image import ByteRange, PaddingGap
from rig.splicer.kinds import Mode, Policy, SpliceRefused
from rig.splicer.modes.base import Branch, BranchRequest, SpliceMode
from rig.splicer.repository import MAX_SPRINGBOARDS
from rig.splicer.window import choose_window

REL32_SIZE = 5      # jmp rel32: E9 xx xx xx xx
# A rel32 that does not fit for these reasons may still fit as a rel8 into a springboard chain.
_NARROWER_HELPS = ("too-short", "target-inside", "crosses-end", "indirect-jumps")


@dataclass(frozen=True)
class Springboard:
    address: int
    data: bytes
    original: bytes


class Jmp(SpliceMode):
    mode = Mode.JMP
    name = "jmp"

    def branch(self, request: BranchRequest) -> Branch:
        code, point, policy = request.code, request.point, request.policy
        if request.springboards == 0:
            return self._rel32(request)
        if request.springboards is not None:
            window = choose_window(code, point, sb.REL8_SIZE, policy)
            route = sb.find_route_exact(point, request.free_padding, request.springboards)
            if route is None:
                raise SpliceRefused("no-springboard-route", f"no chain of exactly {request.springboards} "
                                    f"springboard(s) through free padding is reachable from {point:#x}",
                                    "ask for fewer springboards, or pick another point")
            return Branch(window, jmp_bytes(point, route[0].address, sb.REL8_SIZE), tuple(route))
        try:
            return self._rel32(request)
        except SpliceRefused as wide:
            if wide.reason not in _NARROWER_HELPS:
                raise
            first_refusal = wide
        if policy is Policy.SINGLE and code.instruction_at(point).size < sb.REL8_SIZE:
            raise first_refusal
        window = choose_window(code, point, sb.REL8_SIZE, policy)
        route = sb.find_route(point, request.free_padding, MAX_SPRINGBOARDS)
        if route is None:
            raise SpliceRefused("no-springboard-route", f"{REL32_SIZE} bytes cannot be taken at {point:#x} "
                                f"({first_refusal.message}) and no chain of jmp rel8 through free padding "
                                f"within {MAX_SPRINGBOARDS} hops reaches a 5-byte gap",
                                "use --mode trap, which needs only 2 bytes")
        return Branch(window, jmp_bytes(point, route[0].address, sb.REL8_SIZE), tuple(route))

    @staticmethod
    def _rel32(request: BranchRequest) -> Branch:
        window = choose_window(request.code, request.point, REL32_SIZE, request.policy)
        return Branch(window, jmp_bytes(request.point, request.patch, REL32_SIZE))


def jmp_bytes(at: int, target: int, size: int) -> bytes:
    """``jmp rel32`` (size 5) or ``jmp rel8`` (size 2) at ``at`` to ``target``."""
    op = ix.Code.JMP_REL32_32 if size == REL32_SIZE else ix.Code.JMP_REL8_32
    encoder = ix.Encoder(32)
    try:
        encoder.encode(ix.Instruction.create_branch(op, target), at)
    except ValueError as exc:
        raise SpliceRefused("out-of-range", f"jmp from {at:#x} cannot reach {target:#x}: {exc}") from exc
    data = encoder.take_buffer()
    assert len(data) == size
    return data


def encode_hops(route: Sequence[sb.Hop], space: Sequence[ByteRange], patch: int) -> list[Springboard]:
    """The springboards of a route: rel8 to the next hop, the last one rel32 to the patch."""
    boards = []
    for index, hop in enumerate(route):
        if hop.final:
            data = jmp_bytes(hop.address, patch, REL32_SIZE)
        else:
            data = jmp_bytes(hop.address, route[index + 1].address, sb.REL8_SIZE)
        boards.append(Springboard(hop.address, data, _original_padding(space, hop.address, len(data))))
    return boards


def _original_padding(space: Sequence[ByteRange], address: int, length: int) -> bytes:
    for gap in space:
        if isinstance(gap, PaddingGap) and gap.start <= address and address + length <= gap.end:
            return gap.bytes_at(address, length)
    raise SpliceRefused("no-springboard-route", f"springboard at {address:#x} is not in known padding",
                        "pass padding_gaps(image) as springboard_space")
