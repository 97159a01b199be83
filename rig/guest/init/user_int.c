/* `user-int V`: does `int $V` from user mode fault?
 *
 * A forked child calls a 3-byte stub `int $V; ret` that it writes into .data
 * (2.4 i386 has no NX, so .data is executable), for any vector 0..255 without a
 * table of instructions.  The child enters with eax = getpid so that V = 0x80
 * is a harmless system call.  A DPL-0 gate raises #GP -> SIGSEGV (11).
 */
#include "commands.h"

static u8 int_stub[4] = {0xcd, 0x00, 0xc3, 0x90}; /* int $imm8; ret; nop */

static __attribute__((noreturn)) void run_int_stub(u32 vector)
{
    long eax;
    int_stub[1] = (u8)vector;
    __asm__ volatile("call *%1"
                     : "=a"(eax)
                     : "r"(int_stub), "0"(NR_getpid)
                     : "ecx", "edx", "memory", "cc");
    (void)eax;
    sys_exit(0);
}

int cmd_user_int(struct request *req)
{
    u32 vector;
    long pid, ret;
    int status = 0, signal;
    if (req->argc != 2 || parse_u32(req->argv[1], 255, &vector) != 0)
        return fail(req, "usage: user-int V  (V a vector number 0..255)");
    pid = sys_fork();
    if (pid < 0)
        return fail_errno(req, "user-int: fork failed", pid);
    if (pid == 0)
        run_int_stub(vector);
    do {
        ret = sys_wait4((int)pid, &status, 0, 0);
    } while (ret == -EINTR);
    if (ret < 0)
        return fail_errno(req, "user-int: wait4 failed", ret);
    /* killed by a signal: low 7 bits hold it (0x7f would mean stopped) */
    signal = status & 0x7f;
    if (signal == 0x7f)
        signal = 0;
    line_kv_u64(&req->reply, "vector", vector);
    line_kv_u64(&req->reply, "faulted", signal != 0);
    line_kv_i32(&req->reply, "signal", signal);
    line_kv_i32(&req->reply, "status", status);
    return 0;
}
