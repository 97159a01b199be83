"""The bench's parts, in the order the report shows them (a part after the parts it needs).

A new part: one module with a StaticPart, GuestPart or DerivedPart, and one line here.
"""
from __future__ import annotations

from rig.bench.determinism import DeterminismPart
from rig.bench.fig4 import Fig4Part
from rig.bench.fig5 import Fig5Part
from rig.bench.hops import HopsPart
from rig.bench.latency import LatencyPart
from rig.bench.part import Registry
from rig.bench.scale import ScalePart
from rig.bench.table1 import Table1Part

PARTS = Registry([
    Table1Part(),
    LatencyPart(),
    Fig4Part(),
    HopsPart(),
    Fig5Part(),
    ScalePart(),
    DeterminismPart(),
])
