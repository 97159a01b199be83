"""The cost model behind Fig. 5 of the paper: modeled average splice cost versus target-buffer offset.

The paper's model (Sect. 5.1): for each target-buffer offset, draw 10000 instrumentation
points; the length of the instruction at the point follows the Fig. 4 distribution
(1-byte instructions excluded: no branch fits in one byte); a trap splice always costs
one trap (relative cost 19), a jmp splice costs one jmp (relative cost 1) when the
instruction holds a 5-byte ``jmp rel32`` and otherwise "small-sized jmp instructions ...
used repeatedly".  The paper never says how many; the variants below make that explicit:

``rel8-chain`` (the paper's reading)
    Only 2..4 bytes are free, so the splice is a 2-byte ``jmp rel8`` that reaches at most
    127 bytes forward per hop; covering ``offset`` bytes takes ``ceil(offset / 127)`` hops.
    (This assumes a free 2-byte slot every 127 bytes along the way, which real code does
    not have -- it is the model that makes the jmp curve grow with offset.)
``gilk-springboard``
    GILK-like: one ``jmp rel8`` to a springboard within 127 bytes that holds a
    ``jmp rel32``, which reaches all 4 GB: 2 jmps whatever the offset.
``real-splicer``
    Our splicer: springboards in inter-function padding, then rel32.  The hop count of a
    short site is drawn (uniformly, same generator) from hop counts the caller measured on
    real splices; it does not depend on the offset.

Every variant is evaluated with the paper's relative costs (jmp 1, trap 19) and, when
given, with measured relative costs (our Table 1).  The same draws are used at every
offset (common random numbers): each offset still gets N trials, and differences between
offsets are due to the model only, not to Monte Carlo noise.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rig.errors import RigError

PAPER_TRIALS = 10_000
PAPER_JMP_COST = 1.0
PAPER_TRAP_COST = 19.0
REL8_REACH = 127  # bytes forward a 2-byte jmp rel8 can go
REL32_LENGTH = 5
DEFAULT_OFFSETS = tuple(2**k for k in range(10, 31))  # 1 KiB .. 1 GiB, as the paper's x axis

CHAIN = "rel8-chain"
GILK = "gilk-springboard"
REAL = "real-splicer"


@dataclass(frozen=True)
class CostSet:
    """Relative cost of one jmp and of one trap, and where the numbers come from."""

    label: str
    jmp: float
    trap: float

    def __post_init__(self) -> None:
        if not (self.jmp > 0 and self.trap > 0):
            raise RigError(f"costs must be positive (jmp={self.jmp}, trap={self.trap})",
                           "pass the measured Table 1 costs, e.g. cycles per jmp and per trap")


    @classmethod
    def from_cycles(cls, label: str, jmp_cycles: float, trap_cycles: float) -> "CostSet":
        """Measured clocks per jmp and per trap -> relative costs with jmp = 1 (as Table 1)."""
        if not (jmp_cycles > 0 and trap_cycles > 0):
            raise RigError(f"measured costs must be positive (jmp={jmp_cycles}, trap={trap_cycles})",
                           "subtract the floor only if the result stays positive; report raw clocks otherwise")
        return cls(f"{label} (jmp 1, trap {trap_cycles / jmp_cycles:.3g})", 1.0, trap_cycles / jmp_cycles)


PAPER_COSTS = CostSet("paper (jmp 1, trap 19)", PAPER_JMP_COST, PAPER_TRAP_COST)


@dataclass
class Curve:
    """Average relative cost per offset for one model variant and one cost set."""

    variant: str
    costs: CostSet
    offsets: list[int]
    jmp_mean: list[float]
    trap_mean: list[float]
    crossover_offset: int | None
    verdict: str

    def to_dict(self) -> dict[str, object]:
        return {
            "variant": self.variant,
            "costs": {"label": self.costs.label, "jmp": self.costs.jmp, "trap": self.costs.trap},
            "offsets": self.offsets,
            "jmp_mean": self.jmp_mean,
            "trap_mean": self.trap_mean,
            "crossover_offset": self.crossover_offset,
            "verdict": self.verdict,
        }


@dataclass
class Fig5Result:
    seed: int
    trials: int
    length_probabilities: dict[int, float]
    share_short: float  # P(2 <= length <= 4) after excluding 1-byte instructions
    curves: list[Curve] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "trials": self.trials,
            "length_probabilities": {str(k): v for k, v in sorted(self.length_probabilities.items())},
            "share_short_2_to_4": self.share_short,
            "curves": [c.to_dict() for c in self.curves],
        }


def length_probabilities(counts: Mapping[int, int]) -> dict[int, float]:
    """Fig. 4 counts -> probabilities over lengths >= 2 (the paper drops 1-byte ones)."""
    usable = {int(length): int(count) for length, count in counts.items() if int(length) >= 2 and count > 0}
    total = sum(usable.values())
    if total == 0:
        raise RigError("the length distribution has no instructions of 2 bytes or more",
                       "compute Fig. 4 on real object files first")
    return {length: count / total for length, count in sorted(usable.items())}


def chain_hops(offset: int) -> int:
    """Hops of 2-byte jmp rel8 needed to cover ``offset`` bytes (127 per hop)."""
    return max(1, math.ceil(offset / REL8_REACH))


def _hops_per_trial(variant: str, lengths: np.ndarray, offset: int, measured: np.ndarray | None) -> np.ndarray:
    long_site = lengths >= REL32_LENGTH
    if variant == CHAIN:
        short_hops: np.ndarray | int = chain_hops(offset)
    elif variant == GILK:
        short_hops = 2
    elif variant == REAL:
        assert measured is not None
        short_hops = measured
    else:
        raise RigError(f"unknown Fig. 5 variant {variant!r}", f"use one of {CHAIN}, {GILK}, {REAL}")
    return np.where(long_site, 1, short_hops)


def _crossover(offsets: Sequence[int], jmp_mean: Sequence[float], trap_mean: Sequence[float]) -> int | None:
    for offset, jmp, trap in zip(offsets, jmp_mean, trap_mean):
        if jmp > trap:
            return offset
    return None


def _verdict(variant: str, costs: CostSet, offsets: Sequence[int], jmp_mean: Sequence[float],
             trap_mean: Sequence[float], crossover: int | None) -> str:
    """Does the paper's conclusion (jmp grows with offset and ends up dearer than trap) hold?"""
    grows = jmp_mean[-1] > jmp_mean[0] * 1.01
    largest = f"{offsets[-1]:,} B"
    head = f"{variant}, {costs.label}: "
    if grows and crossover is not None:
        where = (f"already at the smallest offset ({crossover:,} B)" if crossover == offsets[0]
                 else f"from {crossover:,} B on")
        return (head + f"holds -- jmp's average cost grows with offset and exceeds trap's {where} "
                f"({jmp_mean[-1]:.3g} vs {trap_mean[-1]:.3g} at {largest}).")
    if crossover is not None:
        return (head + f"does not hold as stated -- jmp is dearer than trap ({jmp_mean[-1]:.3g} vs "
                f"{trap_mean[-1]:.3g}) but flat in offset, so the distance to the buffer is not the reason.")
    return (head + f"does not hold -- jmp stays cheaper than trap at every offset up to {largest} "
            f"({jmp_mean[-1]:.3g} vs {trap_mean[-1]:.3g}).")


def simulate(
    counts: Mapping[int, int],
    seed: int,
    trials: int = PAPER_TRIALS,
    offsets: Sequence[int] = DEFAULT_OFFSETS,
    measured_costs: CostSet | None = None,
    measured_short_hops: Sequence[int] | None = None,
) -> Fig5Result:
    """Run the model for every variant and cost set.

    ``counts``: Fig. 4 counts per instruction length (merged over the objects).
    ``measured_costs``: our Table 1 relative costs; adds one curve per variant.
    ``measured_short_hops``: jmps our splicer really executed at sites shorter than 5
    bytes (one entry per measured splice); enables the ``real-splicer`` variant.
    """
    if trials <= 0:
        raise RigError(f"trials must be positive, got {trials}", "the paper used 10000")
    if not offsets or any(o <= 0 for o in offsets) or list(offsets) != sorted(offsets):
        raise RigError("offsets must be positive and increasing", "e.g. powers of 2 from 2**10 to 2**30")
    probabilities = length_probabilities(counts)
    generator = np.random.default_rng(seed)
    lengths = generator.choice(np.array(list(probabilities)), size=trials, p=np.array(list(probabilities.values())))
    variants = [CHAIN, GILK]
    measured_hops: np.ndarray | None = None
    if measured_short_hops:
        if any(h < 1 for h in measured_short_hops):
            raise RigError("measured hop counts must be >= 1", "count the jmps one splice executes to reach its patch")
        measured_hops = generator.choice(np.array(measured_short_hops, dtype=np.int64), size=trials)
        variants.append(REAL)
    cost_sets = [PAPER_COSTS] + ([measured_costs] if measured_costs else [])
    short_share = float(sum(p for length, p in probabilities.items() if length < REL32_LENGTH))
    result = Fig5Result(seed=seed, trials=trials, length_probabilities=probabilities, share_short=short_share)
    for costs in cost_sets:
        for variant in variants:
            jmp_mean: list[float] = []
            trap_mean: list[float] = []
            for offset in offsets:
                hops = _hops_per_trial(variant, lengths, offset, measured_hops)
                jmp_mean.append(float(np.mean(hops * costs.jmp)))
                # A trap is 2 bytes with a full 32-bit reach: one trap, always.
                trap_mean.append(float(costs.trap))
            crossover = _crossover(offsets, jmp_mean, trap_mean)
            result.curves.append(Curve(variant, costs, list(offsets), jmp_mean, trap_mean, crossover,
                                       _verdict(variant, costs, offsets, jmp_mean, trap_mean, crossover)))
    return result
