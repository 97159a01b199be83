"""trapsplice: live trap/jmp splicing of a running Linux 2.4.20 kernel in QEMU."""
