"""Console logs captured from the real guest, kept as templates that render against any vmlinux.

A kernel build moves code, so a captured oops' addresses and ``Code:`` bytes are those of the build it was
captured on. In tests/data/console/*.txt every value that decoding reads against vmlinux is a field holding
both what it is, in vmlinux's terms, and what the capture printed:

* ``{banner=Linux version 2.4.20 ...}`` — the kernel's banner (``linux_banner``);
* ``{addr system_call+0x2f=c010a7a7}`` — a kernel-text address (EIP, call trace, stack words);
* ``{code sys_getpid+0x2=e0 ff ff ...}`` — ``Code:`` bytes that are vmlinux's own, as many as were captured;
* ``{bug sys_getpid+0x0=<bad filename>:65504}`` — what 2.4.20's ``handle_BUG`` prints for a ud2 there
  (the line and file pointer it reads after the ud2 are vmlinux's bytes).

The rest is the log as QEMU wrote it, doubled characters and "\\n\\r" line ends included: the bytes the rig
wrote over kernel text, repository addresses, registers, data and stack values (nothing decodes those against
vmlinux). :func:`render` with no image gives the capture back byte for byte; with an image, the log as that
build would have printed it. The fields were written with the capture's own vmlinux, which rendered every
template back into its capture byte for byte.
"""
from __future__ import annotations

import re
from pathlib import Path

from rig.guest.crash import kernel_banner
from rig.splicer.image import KernelImage

DATA = Path(__file__).parent / "data" / "console"
PAGE_OFFSET = 0xC0000000  # 2.4 i386: handle_BUG takes a file pointer below it as "<bad filename>"

_FIELD = re.compile(r"\{(banner|addr|code|bug)(?: ([^=}]+))?=([^}]*)\}")
_PLACE = re.compile(r"([A-Za-z_][\w.]*)\+(0x[0-9a-f]+)")
_KIND = re.compile(r"\{(banner|addr|code|bug)\b")


def captured(name: str) -> str:
    """The capture ``name`` exactly as the guest printed it (decoded as the console watch decodes the log)."""
    return render(template(name))


def rendered(name: str, image: KernelImage) -> str:
    """The capture ``name`` as the build of ``image`` prints it."""
    return render(template(name), image)


def template(name: str) -> str:
    return (DATA / name).read_bytes().decode("utf-8", errors="replace")


def render(text: str, image: KernelImage | None = None) -> str:
    """``text`` with each field replaced: by what was captured, or by what ``image`` holds there."""
    def field(match: re.Match[str]) -> str:
        kind, place, was = match.groups()
        if image is None:
            return was
        if kind == "banner":
            banner = kernel_banner(image)
            if banner is None:
                raise ValueError(f"{image.path.name} has no linux_banner")
            return banner
        address = _address(place, image)
        if kind == "addr":
            return f"{address:08x}"
        if kind == "code":
            return " ".join(f"{byte:02x}" for byte in image.text_bytes(address, len(was.split())))
        return _handle_bug(address, image)

    out = _FIELD.sub(field, text)
    if left := _KIND.search(out):  # a mistyped field would otherwise pass as log text
        raise ValueError(f"malformed field at {out[left.start():left.start() + 40]!r}")
    return out


def _address(place: str, image: KernelImage) -> int:
    """``name+0xoff`` in ``image``; an offset past a sized function's end means the template no longer fits
    this build (the function changed): said here rather than as a wrong name further on."""
    match = _PLACE.fullmatch(place or "")
    if match is None:
        raise ValueError(f"{place!r} is not symbol+0xoffset")
    name, offset = match.group(1), int(match.group(2), 16)
    if len({sym.address for sym in image.symbols if sym.name == name}) > 1:  # static functions of one name
        raise ValueError(f"{name} names several places in {image.path.name}: the template cannot say which")
    symbol = image.symbol(name)
    if symbol.kind == "FUNC" and symbol.size and offset >= symbol.size:
        raise ValueError(f"{place} lies past the end of {symbol.name} ({symbol.size:#x} bytes) in "
                         f"{image.path.name}: the capture no longer fits this build")
    return symbol.address + offset


def _handle_bug(address: int, image: KernelImage) -> str:
    """handle_BUG's "FILE:LINE" for a ud2 at ``address``: the 16-bit line and the file pointer after it."""
    line = int.from_bytes(image.text_bytes(address + 2, 2), "little")
    pointer = int.from_bytes(image.text_bytes(address + 4, 4), "little")
    if pointer < PAGE_OFFSET:
        return f"<bad filename>:{line}"
    section = image.section_at(pointer)
    if section is None:  # the kernel would print whatever memory holds there: nothing to render
        raise ValueError(f"the BUG() file pointer {pointer:#x} after {address:#x} is outside {image.path.name}")
    start = pointer - section.address
    file = section.data[start:section.data.index(b"\0", start)].decode(errors="replace")
    return f"{file}:{line}"
