/* /init exec'd by the workload (pid != 1): small child programs chosen by argv[1].
 * They never touch the console protocol.
 *
 *   exit N      exit with status N
 *   sum         read stdin to EOF; write its FNV-1a 32 and byte count (8 bytes) to stdout
 *   cat         copy stdin to stdout
 *   args A...   exit with a hash of argv[2..] and the environment (tests exec's copying)
 *   chain N     exec itself N more times, then exit 40 + N0 % 50 (N0: the first N)
 *   raise SIG   send itself SIG (default action)
 *   spin N      burn N million loop iterations, then exit 0
 */
#include "workload.h"

static u32 parse_or(const char *s, u32 fallback)
{
    u32 value;
    return s && parse_u32(s, 1000000, &value) == 0 ? value : fallback;
}

static __attribute__((noreturn)) void child_sum(void)
{
    static u8 buf[8192];
    u32 h = 0x811c9dc5u, bytes = 0, out[2];
    long n, i;
    for (;;) {
        n = sys_read(0, buf, sizeof(buf));
        if (n == -EINTR)
            continue;
        if (n <= 0)
            break;
        for (i = 0; i < n; i++)
            h = (h ^ buf[i]) * 0x01000193u;
        bytes += (u32)n;
    }
    out[0] = h;
    out[1] = bytes;
    sys_exit(wl_write_full(1, out, sizeof(out)) == sizeof(out) ? 0 : 3);
}

static __attribute__((noreturn)) void child_cat(void)
{
    static u8 buf[4096];
    long n;
    for (;;) {
        n = sys_read(0, buf, sizeof(buf));
        if (n == -EINTR)
            continue;
        if (n <= 0)
            sys_exit(n < 0 ? 2 : 0);
        if (wl_write_full(1, buf, (u32)n) != n)
            sys_exit(3);
    }
}

static __attribute__((noreturn)) void child_chain(char **argv, char **envp)
{
    static char number[12];
    u32 left = parse_or(argv[2], 0), first = parse_or(argv[3], left), i = 0, v;
    char *args[5];
    if (left == 0)
        sys_exit((int)(40 + first % 50));
    /* argv[2] = left - 1 */
    v = left - 1;
    do {
        number[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    number[i] = '\0';
    for (v = 0; v < i / 2; v++) {
        char t = number[v];
        number[v] = number[i - 1 - v];
        number[i - 1 - v] = t;
    }
    args[0] = argv[0];
    args[1] = "chain";
    args[2] = number;
    args[3] = argv[3] ? argv[3] : argv[2];
    args[4] = 0;
    sys_execve("/init", args, envp);
    sys_exit(126);
}

__attribute__((noreturn)) void child_main(int argc, char **argv, char **envp)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (str_eq(mode, "exit"))
        sys_exit((int)parse_or(argv[2], 0) & 0xff);
    if (str_eq(mode, "sum"))
        child_sum();
    if (str_eq(mode, "cat"))
        child_cat();
    if (str_eq(mode, "args")) {
        u32 h = 0x811c9dc5u;
        int i;
        for (i = 2; i < argc; i++)
            h = (h ^ wl_fnv32(argv[i], str_len(argv[i]))) * 0x01000193u;
        for (i = 0; envp[i]; i++)
            h = (h ^ wl_fnv32(envp[i], str_len(envp[i]))) * 0x01000193u;
        sys_exit((int)(h & 0x7f));
    }
    if (str_eq(mode, "chain"))
        child_chain(argv, envp);
    if (str_eq(mode, "raise")) {
        sys_kill((int)sys_getpid(), (int)parse_or(argv[2], SIGTERM));
        sys_exit(1);
    }
    if (str_eq(mode, "spin")) {
        volatile u32 sink = 0;
        u32 i, n = parse_or(argv[2], 1) * 1000000u;
        for (i = 0; i < n; i++)
            sink += i;
        sys_exit(0);
    }
    sys_exit(125);
}
