"""The I/O side of splicing, above the pure splicer and the gdb session.

* :mod:`~rig.instrument.manager`: the instrumenter (splice, unsplice, list, audit) and ``connect``;
* :mod:`~rig.instrument.transaction`: the one write path into guest memory, journaled;
* :mod:`~rig.instrument.components`: C components, loaded and spliced to;
* :mod:`~rig.instrument.faults`: fault injection (gdb killed at each write in turn).
"""
from rig.instrument.manager import (ActiveSplice, GuestSnapshot, Instrumenter, SpliceResult, UnspliceResult,
                                    connect, load_image)

__all__ = ["ActiveSplice", "GuestSnapshot", "Instrumenter", "SpliceResult", "UnspliceResult", "connect",
           "load_image"]
