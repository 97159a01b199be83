"""Where QEMU's GDB stub listens, and how gdb spells a connection to it.

QEMU offers the stub on a unix-domain socket (``-gdb unix:PATH,server,nowait`` or
``-chardev socket,path=PATH,server=on,wait=off,id=g -gdb chardev:g``) or on TCP
(``-gdb tcp:127.0.0.1:PORT``). gdb connects to a unix socket when ``target remote`` is
given the socket's bare path: gdb opens the name like a serial device and, finding a
socket there, connects to it. The ``unix::PATH`` spelling from gdb's manual is *not*
understood by Debian's gdb 13.1 ("unix::/x.sock: No such file or directory"), and a
path containing ``:`` would be read as ``host:port``, so paths are passed absolute and
checked for ``:`` and whitespace.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from rig.errors import RigError

_TCP_RE = re.compile(r"^(?:tcp:)?(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class StubAddress:
    """A unix socket path, or a TCP host and port."""

    unix_path: Path | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, spec: str | os.PathLike[str] | StubAddress) -> StubAddress:
        """Accept ``/path/to.sock``, ``unix:PATH``, ``unix::PATH``, ``HOST:PORT`` or ``tcp:HOST:PORT``."""
        if isinstance(spec, StubAddress):
            return spec
        if isinstance(spec, os.PathLike):
            return cls(unix_path=Path(spec))
        text = spec.strip()
        for prefix in ("unix::", "unix:"):
            if text.startswith(prefix):
                return cls(unix_path=Path(text[len(prefix):]))
        match = _TCP_RE.match(text)
        if match and not text.startswith("/"):
            return cls(host=match["host"], port=int(match["port"]))
        if "/" in text or text.endswith(".sock"):
            return cls(unix_path=Path(text))
        raise RigError(f"cannot tell what GDB stub address {spec!r} means",
                       hint="give a unix socket path (/run/x.sock, unix:PATH) or HOST:PORT")

    @property
    def is_unix(self) -> bool:
        return self.unix_path is not None

    def gdb_target(self) -> str:
        """The argument of ``target remote``."""
        if self.unix_path is not None:
            path = str(self.unix_path.absolute())
            if ":" in path or any(ch.isspace() for ch in path):
                # -target-select takes the rest of the line verbatim and reads ':' as host:port.
                raise RigError(f"GDB stub socket path {path!r} contains ':' or whitespace, "
                               "which gdb cannot connect to",
                               hint="put the guest's run directory on a plain path")
            return path
        return f"{self.host}:{self.port}"

    def describe(self) -> str:
        if self.unix_path is not None:
            return f"unix socket {self.unix_path}"
        return f"TCP {self.host}:{self.port}"

    def check_present(self) -> None:
        """Fail early and plainly when a unix socket stub is obviously not there."""
        if self.unix_path is None:
            return
        try:
            mode = self.unix_path.stat().st_mode
        except FileNotFoundError:
            raise RigError(f"no GDB stub at {self.describe()}: the file does not exist",
                           hint="the guest is not running (or QEMU was started without "
                                "-gdb unix:PATH,server,nowait); start the guest first") from None
        if not stat.S_ISSOCK(mode):
            raise RigError(f"{self.unix_path} is not a unix socket, so it cannot be QEMU's GDB stub",
                           hint="pass the path QEMU was given in -gdb unix:PATH,server,nowait")
