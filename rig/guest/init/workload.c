/* `workload [align=TICKS] [part...]`: drive the kernel broadly and answer a
 * digest of what came back.
 *
 *   reply: digest=<16 hex> <part>=<8 hex>... <part>_ms=N... ms=N [<part>_failed=<step>:<error>]
 *          [start_jiffies=N]
 *
 * digest covers the parts run, in order; each <part>= is that part's own hash
 * folded to 32 bits, so a changed digest names the part.  The *_ms fields are
 * wall time for tuning and are in no hash.  Each part runs in a child of pid 1,
 * in a process group of its own: a crash or hang is that part's failure, never
 * pid 1's, and what is left of the group is killed and reaped afterwards.
 */
#include "workload.h"

#define PART_TIMEOUT_MS 60000

struct part_entry {
    const char *name;
    int (*run)(struct part *p);
};

static const struct part_entry parts[] = {
    {"fork", part_fork},
    {"pipe", part_pipe},
    {"signal", part_signal},
    {"file", part_file},
    {"memory", part_memory},
    {"sched", part_sched},
    {"tcp", part_tcp},
    {"udp", part_udp},
    {"unix", part_unix},
    {"nic", part_nic},
};
#define PART_COUNT (sizeof(parts) / sizeof(parts[0]))

u8 wl_buffer[WL_BUFFER_BYTES];
u8 wl_buffer2[WL_BUFFER_BYTES];

/* --- hashing -------------------------------------------------------------- */

#define FNV64_OFFSET 0xcbf29ce484222325ull
#define FNV64_PRIME 0x100000001b3ull
#define FNV32_OFFSET 0x811c9dc5u
#define FNV32_PRIME 0x01000193u

static u64 fnv64(u64 h, const void *data, u32 len)
{
    const u8 *b = data;
    while (len--)
        h = (h ^ *b++) * FNV64_PRIME;
    return h;
}

u32 wl_fnv32(const void *data, u32 len)
{
    const u8 *b = data;
    u32 h = FNV32_OFFSET;
    while (len--)
        h = (h ^ *b++) * FNV32_PRIME;
    return h;
}

void wl_mix(struct part *p, u32 value)
{
    p->hash = fnv64(p->hash, &value, sizeof(value));
}

void wl_mix_bytes(struct part *p, const void *data, u32 len)
{
    wl_mix(p, len);
    p->hash = fnv64(p->hash, data, len);
}

void wl_mix_str(struct part *p, const char *s)
{
    wl_mix_bytes(p, s, str_len(s));
}

int wl_fail(struct part *p, const char *step, long error)
{
    if (!p->failed) {
        p->failed = step;
        p->error = error;
        wl_mix_str(p, "failed");
        wl_mix_str(p, step);
        wl_mix(p, (u32)error);
    }
    return -1;
}

/* --- data streams --------------------------------------------------------- */

u8 wl_pattern(u32 seed, u32 offset)
{
    u32 x = (offset + seed) * 0x9e3779b1u;
    return (u8)((x >> 24) ^ (offset >> 10));
}

void wl_fill(u8 *buf, u32 len, u32 seed, u32 offset)
{
    u32 i;
    for (i = 0; i < len; i++)
        buf[i] = wl_pattern(seed, offset + i);
}

void stream_init(struct stream_check *s, u32 seed)
{
    s->seed = seed;
    s->hash = FNV32_OFFSET;
    s->bytes = 0;
    s->mismatches = 0;
}

void stream_update(struct stream_check *s, const u8 *data, u32 len)
{
    u32 i, h = s->hash;
    for (i = 0; i < len; i++) {
        h = (h ^ data[i]) * FNV32_PRIME;
        if (data[i] != wl_pattern(s->seed, s->bytes + i))
            s->mismatches++;
    }
    s->hash = h;
    s->bytes += len;
}

void stream_mix(struct part *p, const struct stream_check *s)
{
    wl_mix(p, s->hash);
    wl_mix(p, s->bytes);
    wl_mix(p, s->mismatches);
}

/* --- process and I/O helpers ------------------------------------------------ */

long wl_read_full(int fd, void *buf, u32 len)
{
    u8 *p = buf;
    u32 done = 0;
    while (done < len) {
        long n = sys_read(fd, p + done, len - done);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return n;
        if (n == 0)
            break;
        done += (u32)n;
    }
    return (long)done;
}

long wl_put_full(wl_write_step step, int fd, const u8 *buf, u32 len)
{
    u32 done = 0;
    while (done < len) {
        long n = step(fd, buf + done, len - done);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? n : -EPIPE;
        done += (u32)n;
    }
    return (long)done;
}

static long write_step(int fd, const u8 *buf, u32 len)
{
    return sys_write(fd, buf, len);
}

long wl_write_full(int fd, const void *buf, u32 len)
{
    return wl_put_full(write_step, fd, buf, len);
}

long wl_wait_readable(int fd, int ms)
{
    struct pollfd32 pfd;
    long n;
    pfd.fd = fd;
    pfd.events = POLLIN;
    pfd.revents = 0;
    do {
        n = sys_poll(&pfd, 1, ms);
    } while (n == -EINTR);
    return n;
}

long wl_wait(int pid, int *status)
{
    long ret;
    do {
        ret = sys_wait4(pid, status, 0, 0);
    } while (ret == -EINTR);
    return ret;
}

long wl_spawn(int (*fn)(void *), void *arg)
{
    long pid = sys_fork();
    if (pid == 0)
        sys_exit(fn(arg) & 0xff);
    return pid;
}

static char *child_env[] = {"TRAPSPLICE_CHILD=1", 0};

long wl_spawn_init(char *const *args, int in, int out)
{
    long pid = sys_fork();
    int fd;
    if (pid == 0) {
        if (in >= 0 && in != 0)
            sys_dup2(in, 0);
        if (out >= 0 && out != 1)
            sys_dup2(out, 1);
        for (fd = 3; fd < 64; fd++) /* e.g. the write end of its own stdin */
            sys_close(fd);
        sys_execve("/init", args, child_env);
        sys_exit(127);
    }
    return pid;
}

int wl_status_code(int status)
{
    if ((status & 0x7f) == 0)
        return (status >> 8) & 0xff;
    return 256 + (status & 0x7f);
}

void wl_sleep_ms(u32 ms)
{
    struct timespec32 t, rem;
    t.tv_sec = (long)(ms / 1000);
    t.tv_nsec = (long)(ms % 1000) * 1000000L;
    while (sys_nanosleep2(&t, &rem) == -EINTR)
        t = rem;
}

u32 wl_now_ms(void)
{
    struct timeval32 tv;
    sys_gettimeofday(&tv);
    return (u32)tv.tv_sec * 1000u + (u32)tv.tv_usec / 1000u;
}

#define MS_RDONLY 1
#define MS_REMOUNT 32

long wl_root_writable(int writable)
{
    return sys_mount("none", "/", "ext2", MS_REMOUNT | (writable ? 0 : MS_RDONLY), 0);
}

long wl_read_file(const char *path, char *buf, u32 len)
{
    long fd = sys_open(path, O_RDONLY, 0), n;
    if (fd < 0)
        return fd;
    n = wl_read_full((int)fd, buf, len);
    sys_close((int)fd);
    return n;
}

/* --- a start the host's timing cannot move (align=TICKS) ----------------------- */

/* Under QEMU -icount the guest's instructions and timer interrupts are
 * deterministic, but a command arrives at a host-timed moment: in the middle
 * of some tick, with the kernel's periodic timers (the NICs' 2 s timers, the
 * TIME_WAIT reaper, the serial poll, neighbour and inet peer gc, the route
 * cache check, kupdated's 5 s flush) at other distances ahead.  Aligned, the
 * parts start right after the tick whose jiffies is a multiple of TICKS (the
 * host's 24000, four minutes, is a multiple of every such period, so each
 * periodic timer stands where it stood in any other aligned run of the same
 * history), woken from idle by that tick, and kupdated's period restarts at
 * that tick (kupdated sleeps from its last flush, not on a fixed grid).
 * Every sleep here ends on a tick taken while the CPU idles, never in a spin
 * whose phase would be the host's. */

#define KUPDATED_MAX_PID 32 /* a kernel thread started at boot: a low pid */
#define HZ 100               /* the i386 2.4 kernel's tick rate */

static long find_kupdated(void)
{
    static char stat[128];
    char path[24] = "/proc/";
    long pid;
    for (pid = 2; pid <= KUPDATED_MAX_PID; pid++) {
        u32 digits = pid >= 10 ? 2 : 1;
        long got;
        path[6] = (char)('0' + (digits == 2 ? pid / 10 : pid));
        if (digits == 2)
            path[7] = (char)('0' + pid % 10);
        memcpy(path + 6 + digits, "/stat", 6);
        got = wl_read_file(path, stat, sizeof(stat) - 1);
        if (got > 0) {
            stat[got] = 0;
            if (str_starts(stat + (stat[1] == ' ' ? 2 : 3), "(kupdated)"))
                return pid;
        }
    }
    return -ESRCH;
}

/* sleep until the tick `target` (at least one tick from now) */
static void sleep_until_tick(u32 target)
{
    u32 now = sys_times(0);
    while ((int)(target - now) > 0) {
        /* nanosleep sleeps one tick more than it is asked for (2.4 rounds up, then adds one) */
        u32 ticks = target - now - 1;
        struct timespec32 t = {(long)(ticks / HZ), (long)(ticks % HZ) * (1000000000L / HZ)}, rem;
        sys_nanosleep2(&t, &rem);
        now = sys_times(0);
    }
}

/* 0 and in *start the jiffies the parts start at, or -errno */
static long align_start(u32 ticks, u32 *start)
{
    long kupdated = find_kupdated();
    u32 now, target;
    if (kupdated < 0)
        return kupdated;
    sys_kill((int)kupdated, SIGSTOP); /* it takes its stop when pid 1 next sleeps */
    now = sys_times(0);
    target = (now / ticks + 1) * ticks;
    if (target - now < 2) /* room for one sleep that ends on the tick */
        target += ticks;
    sleep_until_tick(target);
    sys_kill((int)kupdated, SIGCONT); /* it flushes and sleeps its period from this tick */
    sleep_until_tick(target + 2);
    *start = target + 2;
    return 0;
}

/* --- running parts ---------------------------------------------------------- */

struct part_result {
    u64 hash;
    long error;
    char failed[32];
};

static __attribute__((noreturn)) void run_part_child(const struct part_entry *entry, int result_fd)
{
    static struct part_result result;
    struct part p;
    long null_fd;
    u32 i;

    sys_setpgid(0, 0);
    /* nothing a part does may reach the console: the host reads only replies there */
    null_fd = sys_open("/dev/null", O_RDWR, 0);
    if (null_fd >= 0) {
        sys_dup2((int)null_fd, 0);
        sys_dup2((int)null_fd, 1);
        sys_dup2((int)null_fd, 2);
        if (null_fd > 2)
            sys_close((int)null_fd);
    }
    p.hash = FNV64_OFFSET;
    p.failed = 0;
    p.error = 0;
    entry->run(&p);
    memset(&result, 0, sizeof(result));
    result.hash = p.hash;
    result.error = p.error;
    if (p.failed)
        for (i = 0; p.failed[i] && i < sizeof(result.failed) - 1; i++)
            result.failed[i] = p.failed[i];
    wl_write_full(result_fd, &result, sizeof(result));
    sys_exit(0);
}

/* reap everything the part left behind: its group is killed first */
static void reap_group(int pgid)
{
    int i, status;
    sys_kill(-pgid, SIGKILL);
    for (i = 0; i < 2000; i++) {
        long ret = sys_wait4(-1, &status, WNOHANG, 0);
        if (ret == -ECHILD)
            return;
        if (ret == 0)
            wl_sleep_ms(1);
    }
}

static void run_part(const struct part_entry *entry, struct part_result *result)
{
    int fds[2];
    long pid, ready, n;
    int status = 0;

    memset(result, 0, sizeof(*result));
    if ((n = sys_pipe(fds)) < 0) {
        result->error = n;
        memcpy(result->failed, "runner-pipe", 12);
        return;
    }
    pid = sys_fork();
    if (pid == 0) {
        sys_close(fds[0]);
        run_part_child(entry, fds[1]);
    }
    sys_close(fds[1]);
    if (pid < 0) {
        sys_close(fds[0]);
        result->error = pid;
        memcpy(result->failed, "runner-fork", 12);
        return;
    }
    ready = wl_wait_readable(fds[0], PART_TIMEOUT_MS);
    n = ready > 0 ? wl_read_full(fds[0], result, sizeof(*result)) : 0;
    sys_close(fds[0]);
    if (ready <= 0) {
        memset(result, 0, sizeof(*result));
        result->error = ready;
        memcpy(result->failed, "timeout", 8);
        sys_kill(-(int)pid, SIGKILL);
    } else if (n != (long)sizeof(*result)) {
        sys_kill(-(int)pid, SIGKILL);
        wl_wait((int)pid, &status);
        memset(result, 0, sizeof(*result));
        result->error = wl_status_code(status);
        memcpy(result->failed, "died", 5); /* error: exit code, or 256 + signal */
    }
    wl_wait((int)pid, &status);
    reap_group((int)pid);
}

static const struct part_entry *find_part(const char *name)
{
    u32 i;
    for (i = 0; i < PART_COUNT; i++)
        if (str_eq(parts[i].name, name))
            return &parts[i];
    return 0;
}

static void line_hex(struct line *l, u64 value, int digits)
{
    static const char hex[] = "0123456789abcdef";
    char text[17];
    int i;
    for (i = digits - 1; i >= 0; i--) {
        text[i] = hex[value & 0xf];
        value >>= 4;
    }
    text[digits] = '\0';
    line_str(l, text);
}

static void line_key(struct line *l, const char *key, const char *suffix)
{
    line_str(l, " ");
    line_str(l, key);
    line_str(l, suffix);
    line_str(l, "=");
}

int cmd_workload(struct request *req)
{
    const struct part_entry *chosen[PART_COUNT];
    static struct part_result results[PART_COUNT];
    u32 elapsed[PART_COUNT];
    u32 count = 0, i, j, started, align = 0, first = 1;
    u64 digest = FNV64_OFFSET;
    u32 start_jiffies = 0;

    if (req->argc > 1 && str_starts(req->argv[1], "align=")) {
        if (parse_u32(req->argv[1] + 6, 1000000, &align) || align == 0)
            return fail(req, "workload: align= takes a number of ticks, 1 or more");
        first = 2;
    }
    if ((u32)req->argc == first) {
        for (i = 0; i < PART_COUNT; i++)
            chosen[count++] = &parts[i];
    } else {
        for (i = first; i < (u32)req->argc; i++) {
            const struct part_entry *entry = find_part(req->argv[i]);
            if (!entry) {
                fail(req, "workload: unknown part '");
                line_token(&req->reply, req->argv[i]);
                line_str(&req->reply, "' (parts: ");
                for (j = 0; j < PART_COUNT; j++) {
                    line_str(&req->reply, j ? "," : "");
                    line_str(&req->reply, parts[j].name);
                }
                line_str(&req->reply, ")");
                return -1;
            }
            for (j = 0; j < count; j++)
                if (chosen[j] == entry)
                    return fail(req, "workload: a part is named twice");
            chosen[count++] = entry;
        }
    }

    if (align) {
        long ret = align_start(align, &start_jiffies);
        if (ret < 0)
            return fail_errno(req, "workload: align: no kupdated thread", ret);
    }
    started = wl_now_ms();
    for (i = 0; i < count; i++) {
        u32 part_started = wl_now_ms();
        run_part(chosen[i], &results[i]);
        elapsed[i] = wl_now_ms() - part_started;
        digest = fnv64(digest, chosen[i]->name, str_len(chosen[i]->name) + 1);
        digest = fnv64(digest, &results[i].hash, sizeof(results[i].hash));
        digest = fnv64(digest, results[i].failed, sizeof(results[i].failed));
    }

    line_key(&req->reply, "digest", "");
    line_hex(&req->reply, digest, 16);
    for (i = 0; i < count; i++) {
        line_key(&req->reply, chosen[i]->name, "");
        line_hex(&req->reply, (results[i].hash >> 32) ^ (u32)results[i].hash, 8);
    }
    for (i = 0; i < count; i++) {
        line_key(&req->reply, chosen[i]->name, "_ms");
        line_u64(&req->reply, elapsed[i]);
    }
    line_kv_u64(&req->reply, "ms", wl_now_ms() - started);
    if (align)
        line_kv_u64(&req->reply, "start_jiffies", start_jiffies);
    for (i = 0; i < count; i++) {
        if (!results[i].failed[0])
            continue;
        line_key(&req->reply, chosen[i]->name, "_failed");
        line_token(&req->reply, results[i].failed);
        line_str(&req->reply, ":");
        line_i32(&req->reply, results[i].error);
    }
    return 0;
}
