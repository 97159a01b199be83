"""Drive QEMU's GDB stub through gdb/MI, fast (about a millisecond per command)."""
from rig.gdb.mi import GdbCommandError, GdbDied, GdbTimeout, MiResult
from rig.gdb.session import GdbSession
from rig.gdb.stub import StubAddress

__all__ = ["GdbSession", "StubAddress", "MiResult", "GdbCommandError", "GdbTimeout", "GdbDied"]
