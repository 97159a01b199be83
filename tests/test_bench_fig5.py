"""The Fig. 5 cost model, fed with instruction lengths of code compiled here with gcc -m32 -O2."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from rig.bench.cost_model import (
    CHAIN,
    DEFAULT_OFFSETS,
    GILK,
    PAPER_TRIALS,
    REAL,
    CostSet,
    chain_hops,
    length_probabilities,
    simulate,
)
from rig.bench.fig5 import plot_fig5
from rig.bench.lengths import length_distribution
from rig.errors import RigError
from ccode import PLAIN_FLAGS, compile_c

SOURCE = r"""
    struct page { unsigned long flags; int count; struct page *next; unsigned long index; };
    struct zone { struct page *free[10]; unsigned long nr_free; };
    struct page *rmqueue(struct zone *z, unsigned int order) {
        for (unsigned int cur = order; cur < 10; cur++) {
            struct page *p = z->free[cur];
            if (!p) continue;
            z->free[cur] = p->next;
            while (cur > order) {
                cur--;
                struct page *buddy = p + (1UL << cur);
                buddy->next = z->free[cur]; z->free[cur] = buddy;
            }
            z->nr_free -= 1UL << order; p->count = 1; p->flags &= ~0x3fUL;
            return p;
        }
        return 0;
    }
    int checksum(const unsigned char *b, int n) { int s = 0x1234; while (n--) s = (s << 5) ^ (s >> 27) ^ *b++; return s; }
"""
SEED = 20050101


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory) -> dict[int, int]:
    dist = length_distribution(compile_c(SOURCE, tmp_path_factory.mktemp("fig5"), "mm", flags=PLAIN_FLAGS))
    # The model is only interesting if the code has both short and long sites.
    assert sum(c for n, c in dist.counts.items() if 2 <= n <= 4) > 0
    assert sum(c for n, c in dist.counts.items() if n >= 5) > 0
    return dist.counts


def curve(result, variant: str, label_prefix: str):
    return next(c for c in result.curves if c.variant == variant and c.costs.label.startswith(label_prefix))


def test_same_seed_same_result(counts: dict[int, int]) -> None:
    first = simulate(counts, seed=SEED, measured_short_hops=[2, 3])
    second = simulate(counts, seed=SEED, measured_short_hops=[2, 3])
    assert first.to_dict() == second.to_dict()
    assert first.seed == SEED and first.trials == PAPER_TRIALS
    other = simulate(counts, seed=SEED + 1, measured_short_hops=[2, 3])
    assert other.to_dict()["curves"] != first.to_dict()["curves"]


def test_one_byte_instructions_are_excluded(counts: dict[int, int]) -> None:
    probabilities = length_probabilities(counts)
    assert 1 not in probabilities
    assert math.isclose(sum(probabilities.values()), 1.0)
    assert counts[1] > 0  # gcc's push/pop/ret exist, so the exclusion does something


def test_trap_is_flat_and_chain_grows(counts: dict[int, int]) -> None:
    result = simulate(counts, seed=SEED)
    chain = curve(result, CHAIN, "paper")
    assert chain.offsets == list(DEFAULT_OFFSETS)
    assert set(chain.trap_mean) == {19.0}
    assert all(a <= b for a, b in zip(chain.jmp_mean, chain.jmp_mean[1:]))
    assert chain.jmp_mean[-1] > 1000 * chain.jmp_mean[0]
    # Expected value check: long sites cost 1, short ones ceil(offset/127); the sample mean is near it.
    for offset, mean in zip(chain.offsets, chain.jmp_mean):
        expected = (1 - result.share_short) + result.share_short * chain_hops(offset)
        assert math.isclose(mean, expected, rel_tol=0.05)
    assert chain.crossover_offset is not None
    before = [j for o, j in zip(chain.offsets, chain.jmp_mean) if o < chain.crossover_offset]
    assert all(j <= 19.0 for j in before)
    assert "holds" in chain.verdict and "not" not in chain.verdict


def test_springboard_and_real_splicer_are_flat(counts: dict[int, int]) -> None:
    result = simulate(counts, seed=SEED, measured_short_hops=[2, 2, 3, 4])
    gilk = curve(result, GILK, "paper")
    real = curve(result, REAL, "paper")
    assert len(set(gilk.jmp_mean)) == 1 and 1.0 < gilk.jmp_mean[0] < 2.0
    assert len(set(real.jmp_mean)) == 1 and 1.0 < real.jmp_mean[0] <= 4.0
    assert gilk.crossover_offset is None and "does not hold" in gilk.verdict


def test_measured_costs_add_curves(counts: dict[int, int]) -> None:
    # Costs with the shape our TCG measurement had (trap only ~1.35x a far jmp).
    measured = CostSet.from_cycles("measured", jmp_cycles=740.0, trap_cycles=1000.0)
    result = simulate(counts, seed=SEED, measured_costs=measured, measured_short_hops=[2])
    assert len(result.curves) == 6
    gilk = curve(result, GILK, "measured")
    assert math.isclose(gilk.trap_mean[0], 1000.0 / 740.0)
    # 2 jmps (1 + 1) at short sites outweigh one trap of 1.35 once short sites are common enough.
    expected = (1 - result.share_short) + 2 * result.share_short
    assert math.isclose(gilk.jmp_mean[0], expected, rel_tol=0.05)
    assert (gilk.crossover_offset is not None) == (gilk.jmp_mean[0] > gilk.trap_mean[0])


def test_bad_inputs_are_rig_errors(counts: dict[int, int]) -> None:
    with pytest.raises(RigError):
        simulate({1: 100}, seed=1)
    with pytest.raises(RigError):
        simulate(counts, seed=1, offsets=[4096, 1024])
    with pytest.raises(RigError):
        simulate(counts, seed=1, measured_short_hops=[0])
    with pytest.raises(RigError):
        CostSet.from_cycles("bad", 0.0, 10.0)


def test_plot_writes_png(counts: dict[int, int], tmp_path: Path) -> None:
    result = simulate(counts, seed=SEED, measured_costs=CostSet.from_cycles("m", 700, 1000), measured_short_hops=[2])
    png = plot_fig5(result, tmp_path / "fig5.png", caption="test run")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
