"""Children that die with their owner process: QEMU and gdb are never left running by a killed rig."""
