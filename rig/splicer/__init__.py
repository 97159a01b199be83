"""The splicer's pure logic: kernel bytes in, a splice plan and bytes out. No guest I/O here.

Modules: ``image`` (vmlinux/.o symbols, bytes, padding gaps), ``flow`` (branch targets and
__ex_table sites image-wide), ``analysis`` (preprocessing: decode a function, where it may be
overwritten), ``plan`` (the splice plan), ``springboard`` (jmp rel8 routes), ``repository``
(guest memory layout, trap handler stub), ``idt`` (gate descriptors), ``stackcheck`` (busy points).

Splice protocol, for the I/O side (stop the guest for all of it):

1. Before any splice the repository is installed once: ``repository.install_writes(layout,
   vector, idt_base, gate)`` writes the handler stub, an all-zero trap table and slot table, the
   header, and last the IDT gate (``idt.make_trap_gate(layout.handler).encode()``) on a vector
   from ``idt.find_free_vector`` (its gate must still point at ``ignore_int``).
2. For a splice: read the slot records back (``repository.decode_slot``) and pass the in-use ones
   as ``active``; take ``layout.free_slot(...)``. ``plan_splice`` returns a ``SplicePlan``.
3. Busy check: no task's saved EIP or kernel-stack word may lie in ``plan.busy_ranges`` after
   the first byte (``stackcheck.busy_words``). If one does, continue the guest and retry.
4. Apply ``plan.writes`` in order. Each write with ``expect`` must first read back exactly those
   bytes (the kernel text or padding is what the plan was made from); stop at the first mismatch
   without writing anything. Order: patch area (counter zeroed + code), springboards, trap-table
   entry (trap mode), slot record, and the instrumentation point LAST — so until the point is
   written nothing can reach the new code, and after it everything it reaches is in place.
5. Verify: read every written range back; it must equal ``data``.
6. Undo: ``plan.undo`` (or ``rig.splicer.plan.undo_writes(layout, slot, record)`` from a record read from
   the guest): the point FIRST (restoring ``original`` exactly), then springboards back to their
   padding bytes, the trap-table key set to FREE_KEY, and the slot record zeroed. The patch area
   stays (its hit counter can still be read).

Before: the window holds the kernel's own instructions. After: its first bytes are the branch
(``CD nn`` trap, ``E9 rel32`` jmp, or ``EB rel8`` into a springboard chain ending in ``E9 rel32``),
the rest of the window int3 (0xCC); the patch runs the probe, the displaced instructions
re-encoded for their new address, and ``jmp`` back to ``window.end``.
"""
