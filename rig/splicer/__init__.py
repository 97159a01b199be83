"""The splicer's pure logic: kernel bytes in, a splice plan and bytes out. No guest I/O here.

Modules: ``image`` (vmlinux/.o symbols, bytes), ``padding`` (free gaps between functions),
``flow`` (branch targets and __ex_table sites image-wide), ``analysis`` (decode a function, where
it may be overwritten), ``sections`` (what may be spliced at all), ``window`` (the bytes a branch
takes and what may never be in them), ``modes`` (one module per splice mode), ``plan`` (the
splice plan, the auto tactics), ``live`` (the live splices a plan respects, indexed),
``springboard`` (jmp rel8 routes), ``dispatch`` (the shared
handlers' hashed table), ``repository`` (guest memory layout, handler stubs), ``journal`` (the
write journal), ``idt`` (gate descriptors), ``stackcheck`` (busy points), ``kinds`` (mode,
policy, patch kind, refusal), ``component``/``component_table`` (C components).

Splice protocol, for the I/O side (``rig.instrument``: the guest stopped for all of it, every
write through its journaled transaction):

1. Before any splice the repository is installed once: ``repository.install_writes`` writes the
   handler stubs, an empty dispatch table, the in-use flags, the header, and last the IDT gate
   on a vector from ``idt.find_free_vector`` (its gate must still point at ``ignore_int``).
2. For a splice: read the live slot records back (``repository.decode_slot``) and pass them as
   ``active``; take ``layout.free_slot(...)``. ``plan_splice`` (or ``plan_auto``) returns a
   ``SplicePlan``; a batch plans point after point, each seeing the records of those before
   (one ``live.LiveSplices`` grown with each plan's record: no point rescans the others).
3. Busy check: no task's saved EIP or kernel-stack word may lie in ``plan.busy_ranges`` after
   the first byte (``stackcheck.busy_words``), nor in the patch area about to be reused.
4. Apply ``plan.writes`` in order: patch area (counter zeroed + code), springboards, dispatch
   bucket (shared trap and int3), slot record, in-use flag, a gate of its own, and the
   instrumentation point LAST -- until the point is written nothing can reach the new code.
5. Undo (``plan.undo``, or ``undo_writes`` from a record read from the guest): the point FIRST,
   then springboards back to their padding bytes, the dispatch bucket released, the slot record
   and flag cleared, a gate of its own given back. The patch area stays (its hit counter can
   still be read).

Before: the window holds the kernel's own instructions. After: its first bytes are the branch
(``CD nn`` trap, ``CC`` int3, ``E9 rel32`` jmp, or ``EB rel8`` into a springboard chain ending in
``E9 rel32``), the rest of the window int3 (0xCC); the patch runs the probe, the displaced
instructions re-encoded for their new address, and ``jmp`` back to ``window.end``.
"""
