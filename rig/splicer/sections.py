"""Which kernel memory a splice may touch: one definition for the planner and the linker.

2.4.20 frees everything between ``__init_begin`` and ``__init_end`` once it has booted
(``free_initmem``: "Freeing unused kernel memory"): ``.text.init``, ``.data.init`` and the
``__setup``/``__initcall`` tables. A splice written there lands in pages the allocator has
handed out again, and its undo would write "original" bytes into whatever owns them now; a
component bound to an ``__init`` symbol would call freed code. ``.text.exit`` is discarded at
link time. What stays for the kernel's lifetime is the core text, with the ``.text.lock`` and
``.fixup`` stubs the 2.4 linker script folds into ``.text``, and gcc's cold ``.text.unlikely``.
"""
from __future__ import annotations

CORE_TEXT = frozenset({".text", ".text.unlikely"})
FREED_AFTER_BOOT = frozenset({".text.init", ".data.init", ".setup.init", ".initcall.init",
                              ".text.exit", ".data.exit"})


def freed_after_boot(section: str) -> bool:
    return section in FREED_AFTER_BOOT


def why_not_spliceable(section: str) -> str | None:
    """None when code in ``section`` may be spliced; else the reason, in words."""
    if freed_after_boot(section):
        return (f"it lives in {section}, which 2.4 frees after boot (free_initmem): the page may "
                "belong to something else by now")
    if section not in CORE_TEXT:
        return f"it lives in {section}, which is not kernel text the rig splices ({', '.join(sorted(CORE_TEXT))})"
    return None
