"""Rendering of components for the tasks (components, set, adapt)."""
from __future__ import annotations

from rich.table import Table

from rig.adapt import COMPONENT, FUNCTION, Adaptation
from rig.instrument.components import LoadedComponent, ParamSet
from rig.errors import RigError
from rig.guest.protocol import Event


def components_table(loaded: list[LoadedComponent], data: dict[str, dict[str, int]]) -> Table:
    table = Table(title="loaded components" if loaded else "no components loaded", title_justify="left")
    for column in ("name", "address", "bytes", "hooks", "spliced in (slots)", "data (live)"):
        table.add_column(column)
    for component in loaded:
        hooks = ", ".join(f"{h.kind} {h.kernel_function} → {h.entry}" for h in component.linked.hooks) or "-"
        values = "  ".join(f"{k}={v}" for k, v in sorted(data.get(component.name, {}).items()))
        table.add_row(component.name, f"{component.entry.base:#010x}", str(component.entry.size), hooks,
                      ", ".join(map(str, component.users)) or "no", values)
    return table


def param_line(done: ParamSet) -> str:
    shown = done.raw / done.param.scale if done.param.scale != 1 else done.raw
    return (f"{done.component}.{done.param.name} = {shown:g} (guest u32 {done.raw}, was {done.previous}; "
            f"{done.param.doc}) at {done.address:#010x}")


def adaptation_line(event: Event, adaptation: Adaptation) -> str:
    steps = []
    if adaptation.loaded_now:
        steps.append(f"loaded {COMPONENT}")
    if adaptation.spliced_slot is not None:
        steps.append(f"spliced {FUNCTION} → {COMPONENT} (slot {adaptation.spliced_slot})")
    steps.append(param_line(adaptation.param))
    return f"{event.raw}: " + "; ".join(steps)


def skipped_line(event: Event, error: RigError) -> str:
    """A bad announcement, reported and left alone (the watch goes on)."""
    return f"{event.raw}: skipped, {error.message}" + (f" ({error.hint})" if error.hint else "")
