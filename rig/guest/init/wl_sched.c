/* workload part `sched`: priorities and policies (their values are fixed, so
 * mixed in), many context switches through pipe wait queues, several sleepers
 * on one queue, yield, CPU-bound children of different niceness that use up
 * their time slices, short real-time bursts, timeouts. */
#include "workload.h"

#define SCHED_OTHER 0
#define SCHED_FIFO 1
#define SCHED_RR 2
#define PRIO_PROCESS 0
#define PRIO_PGRP 1
#define SWITCH_ROUNDS 1000

struct sched_param32 {
    int priority;
};

static long set_scheduler(int pid, int policy, int priority)
{
    struct sched_param32 param;
    param.priority = priority;
    return sys3(NR_sched_setscheduler, pid, policy, (long)&param);
}

/* the running real-time policy as the sched_* calls report it (priority, rr interval), then a
 * yield; -1 when a step failed (the part's failure) */
static int realtime_facts(struct part *p, const char *getparam, const char *interval, const char *yield)
{
    struct sched_param32 param;
    struct timespec32 slice;
    TRY(p, getparam, sys2(NR_sched_getparam, 0, (long)&param));
    wl_mix(p, (u32)param.priority);
    TRY(p, interval, sys2(NR_sched_rr_get_interval, 0, (long)&slice));
    wl_mix(p, (u32)(slice.tv_sec * 1000 + slice.tv_nsec / 1000000));
    TRY(p, yield, sys_sched_yield());
    return 0;
}

static int policies(struct part *p)
{
    struct sched_param32 param;
    int policy;
    for (policy = 0; policy <= 2; policy++) {
        wl_mix(p, (u32)sys1(NR_sched_get_priority_max, policy));
        wl_mix(p, (u32)sys1(NR_sched_get_priority_min, policy));
    }
    wl_mix(p, (u32)sys1(NR_sched_get_priority_max, 7)); /* -EINVAL */
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, 0));
    TRY(p, "fifo", set_scheduler(0, SCHED_FIFO, 10));
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, 0));
    if (realtime_facts(p, "getparam", "rr-interval-fifo", "yield-fifo"))
        return -1;
    TRY(p, "rr", set_scheduler(0, SCHED_RR, 5));
    param.priority = 7;
    TRY(p, "setparam", sys2(NR_sched_setparam, 0, (long)&param));
    if (realtime_facts(p, "getparam-rr", "rr-interval", "yield-rr"))
        return -1;
    TRY(p, "other", set_scheduler(0, SCHED_OTHER, 0));
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, 0));
    wl_mix(p, (u32)set_scheduler(0, SCHED_FIFO, 200)); /* -EINVAL */
    /* niceness: getpriority answers 20 - nice */
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    TRY(p, "setpriority", sys3(NR_setpriority, PRIO_PROCESS, 0, 5));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    TRY(p, "nice", sys1(NR_nice, 3));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PGRP, 0));
    TRY(p, "nice-back", sys3(NR_setpriority, PRIO_PROCESS, 0, 0));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    return 0;
}

struct two_pipes {
    int there[2];
    int back[2];
};

static int bouncer(void *arg)
{
    struct two_pipes *tp = arg;
    u8 byte;
    sys_close(tp->there[1]);
    sys_close(tp->back[0]);
    while (wl_read_full(tp->there[0], &byte, 1) == 1) {
        byte = (u8)(byte * 7 + 1);
        if (wl_write_full(tp->back[1], &byte, 1) != 1)
            return 1;
    }
    return 0;
}

/* the step names of one bounce run (a failure names its step) */
struct bounce_steps {
    const char *pipe, *fork, *write, *read, *wait;
};

/* `rounds` bytes there and back with a child running `child`: two context switches per round */
static int bounce(struct part *p, int (*child)(void *), u32 rounds, const struct bounce_steps *step)
{
    static struct two_pipes tp;
    u32 round, h = 0;
    int status = 0;
    u8 byte;
    long pid;
    TRY(p, step->pipe, sys_pipe(tp.there));
    TRY(p, step->pipe, sys_pipe(tp.back));
    pid = TRY(p, step->fork, wl_spawn(child, &tp));
    sys_close(tp.there[0]);
    sys_close(tp.back[1]);
    for (round = 0; round < rounds; round++) {
        byte = (u8)round;
        TRY(p, step->write, wl_write_full(tp.there[1], &byte, 1));
        CHECK(p, step->read, wl_read_full(tp.back[0], &byte, 1) == 1, round);
        h = h * 33 + byte;
    }
    sys_close(tp.there[1]);
    TRY(p, step->wait, wl_wait((int)pid, &status));
    sys_close(tp.back[0]);
    wl_mix(p, h);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

static int switches(struct part *p)
{
    static const struct bounce_steps steps = {"sw-pipe", "sw-fork", "sw-write", "sw-read", "sw-wait"};
    return bounce(p, bouncer, SWITCH_ROUNDS, &steps);
}

/* several readers asleep on one pipe; each takes one byte */
static int one_byte_reader(void *arg)
{
    u8 byte;
    return wl_read_full(*(int *)arg, &byte, 1) == 1 ? byte : 255;
}

static int herd(struct part *p)
{
    int fds[2], i, status = 0;
    u32 sum = 0;
    long pids[4];
    TRY(p, "herd-pipe", sys_pipe(fds));
    for (i = 0; i < 4; i++)
        pids[i] = TRY(p, "herd-fork", wl_spawn(one_byte_reader, &fds[0]));
    wl_sleep_ms(5); /* let them block (the result does not depend on it) */
    for (i = 0; i < 4; i++) {
        u8 byte = (u8)(10 + i);
        TRY(p, "herd-write", wl_write_full(fds[1], &byte, 1));
        sys_sched_yield();
    }
    for (i = 0; i < 4; i++) {
        TRY(p, "herd-wait", wl_wait((int)pids[i], &status));
        sum += (u32)wl_status_code(status);
    }
    sys_close(fds[0]);
    sys_close(fds[1]);
    wl_mix(p, sum); /* 10+11+12+13 in whatever order they woke */
    return 0;
}

/* CPU-bound: burn iterations, yielding now and then; niceness from arg */
static int burner(void *arg)
{
    long nice_value = (long)arg;
    volatile u32 sink = 0;
    u32 i;
    sys3(NR_setpriority, PRIO_PROCESS, 0, nice_value);
    for (i = 0; i < 3000000; i++) {
        sink += i;
        if (i % 500000 == 0)
            sys_sched_yield();
    }
    return (int)(20 - nice_value);
}

static int realtime_burst(void *arg)
{
    volatile u32 sink = 0;
    u32 i;
    if (set_scheduler(0, (int)(long)arg, 20) < 0)
        return 99;
    for (i = 0; i < 400000; i++) {
        sink += i;
        if (i % 100000 == 0)
            sys_sched_yield(); /* RR/FIFO yield: to the end of its priority's queue */
    }
    return (int)sys1(NR_sched_getscheduler, 0);
}

static int cpu_bound(struct part *p)
{
    static const long nices[] = {0, 10, 19, -5};
    static char *spin[] = {"/init", "spin", "2", 0};
    long pids[6], pid;
    u32 sum = 0, i;
    int status = 0;
    for (i = 0; i < 4; i++)
        pids[i] = TRY(p, "burn-fork", wl_spawn(burner, (void *)nices[i]));
    pids[4] = TRY(p, "spin-exec", wl_spawn_init(spin, -1, -1));
    /* another's policy, set from outside */
    pids[5] = TRY(p, "other-fork", wl_spawn(burner, (void *)5));
    wl_mix(p, (u32)set_scheduler((int)pids[5], SCHED_OTHER, 0));
    for (i = 0; i < 6; i++) {
        TRY(p, "burn-wait", wl_wait((int)pids[i], &status));
        sum += (u32)wl_status_code(status) << (i * 5);
    }
    wl_mix(p, sum);
    for (i = 1; i <= 2; i++) {
        pid = TRY(p, "rt-fork", wl_spawn(realtime_burst, (void *)(long)i));
        TRY(p, "rt-wait", wl_wait((int)pid, &status));
        wl_mix(p, (u32)wl_status_code(status));
    }
    return 0;
}

static int waker(void *arg)
{
    wl_sleep_ms(3);
    return wl_write_full(*(int *)arg, "w", 1) == 1 ? 0 : 1;
}

/* sleeping with timeouts, and being woken from a sleep by another process */
static int timeouts(struct part *p)
{
    struct timeval32 tv;
    int fds[2], i, status = 0;
    u32 fd_bits;
    long pid;
    for (i = 0; i < 5; i++) {
        tv.tv_sec = 0;
        tv.tv_usec = 2000;
        wl_mix(p, (u32)sys_select(0, 0, 0, 0, &tv));
    }
    TRY(p, "wake-pipe", sys_pipe(fds));
    pid = TRY(p, "wake-fork", wl_spawn(waker, &fds[1]));
    fd_bits = 1u << fds[0];
    tv.tv_sec = 5;
    tv.tv_usec = 0;
    wl_mix(p, (u32)sys_select(fds[0] + 1, &fd_bits, 0, 0, &tv)); /* woken before the timeout */
    TRY(p, "wake-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    sys_close(fds[0]);
    sys_close(fds[1]);
    for (i = 0; i < 50; i++)
        sys_sched_yield();
    return 0;
}

/* the error paths: no such pid, a negative one, bad pointers, bad policies and priorities */
static int refusals(struct part *p)
{
    struct sched_param32 param;
    struct timespec32 slice;
    const long nobody = 99999, bad_pointer = 16; /* above 2.4's PID_MAX: never a process */
    /* above PID_MAX too, but in init's bucket of the pid hash ((pid >> 8 ^ pid) & 1023 == 1):
     * the lookup walks past init (and whatever shares the bucket) before it answers -ESRCH */
    const long in_inits_bucket = 32897;
    int pid;
    wl_mix(p, (u32)sys2(NR_sched_getparam, -1, (long)&param));
    wl_mix(p, (u32)sys2(NR_sched_getparam, nobody, (long)&param));
    wl_mix(p, (u32)sys2(NR_sched_getparam, 0, bad_pointer));
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, -1));
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, nobody));
    wl_mix(p, (u32)sys2(NR_sched_rr_get_interval, -1, (long)&slice));
    wl_mix(p, (u32)sys2(NR_sched_rr_get_interval, nobody, (long)&slice));
    wl_mix(p, (u32)sys2(NR_sched_rr_get_interval, 0, bad_pointer));
    wl_mix(p, (u32)set_scheduler(-1, SCHED_OTHER, 0));
    wl_mix(p, (u32)set_scheduler((int)nobody, SCHED_OTHER, 0));
    wl_mix(p, (u32)sys2(NR_sched_getparam, in_inits_bucket, (long)&param));
    wl_mix(p, (u32)sys1(NR_sched_getscheduler, in_inits_bucket));
    wl_mix(p, (u32)sys2(NR_sched_rr_get_interval, in_inits_bucket, (long)&slice));
    wl_mix(p, (u32)set_scheduler((int)in_inits_bucket, SCHED_OTHER, 0));
    wl_mix(p, (u32)set_scheduler(0, 7, 0));
    wl_mix(p, (u32)set_scheduler(0, SCHED_OTHER, 5));
    wl_mix(p, (u32)set_scheduler(0, SCHED_RR, 0));
    wl_mix(p, (u32)sys3(NR_sched_setscheduler, 0, SCHED_FIFO, bad_pointer));
    param.priority = 0;
    wl_mix(p, (u32)sys2(NR_sched_setparam, 0, (long)&param)); /* policy kept: SCHED_OTHER */
    param.priority = 3;
    wl_mix(p, (u32)sys2(NR_sched_setparam, 0, (long)&param)); /* -EINVAL for SCHED_OTHER */
    for (pid = 0; pid < 3; pid++)
        wl_mix(p, (u32)sys1(NR_sched_get_priority_max, -1 - pid));
    /* nice clamps to -20..19 */
    TRY(p, "nice-up", sys1(NR_nice, 50));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    TRY(p, "nice-down", sys1(NR_nice, -60));
    wl_mix(p, (u32)sys2(NR_getpriority, PRIO_PROCESS, 0));
    TRY(p, "nice-reset", sys3(NR_setpriority, PRIO_PROCESS, 0, 0));
    return 0;
}

/* --- another user's process -------------------------------------------------- */

#define NR_setuid 23
#define EPERM 1

struct unprivileged_args {
    int parent;
    int report;
};

/* as uid 1000 (no capabilities left): its own policy may change, another
 * user's may not, and real-time is refused */
static int unprivileged(void *arg)
{
    struct unprivileged_args *a = arg;
    long results[4];
    if (sys1(NR_setuid, 1000) < 0)
        return 1;
    results[0] = set_scheduler(a->parent, SCHED_OTHER, 0);  /* -EPERM */
    results[1] = set_scheduler(0, SCHED_OTHER, 0);          /* 0 */
    results[2] = set_scheduler(0, SCHED_FIFO, 1);           /* -EPERM */
    results[3] = sys3(NR_setpriority, PRIO_PROCESS, a->parent, 4); /* -EPERM */
    return wl_write_full(a->report, results, sizeof(results)) == sizeof(results) ? 0 : 2;
}

static int other_user(struct part *p)
{
    static struct unprivileged_args a;
    long results[4], pid;
    int fds[2], status = 0, i;
    TRY(p, "ou-pipe", sys_pipe(fds));
    a.parent = (int)sys_getpid();
    a.report = fds[1];
    pid = TRY(p, "ou-fork", wl_spawn(unprivileged, &a));
    sys_close(fds[1]);
    CHECK(p, "ou-read", wl_read_full(fds[0], results, sizeof(results)) == sizeof(results), 0);
    sys_close(fds[0]);
    TRY(p, "ou-wait", wl_wait((int)pid, &status));
    for (i = 0; i < 4; i++)
        wl_mix(p, (u32)results[i]);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

/* --- a round-robin time slice used up ------------------------------------------ */

static u32 ticks(void)
{
    u32 t[4];
    return (u32)sys1(NR_times, (long)t); /* jiffies */
}

/* SCHED_RR at nice 19 (a one-tick slice), CPU-bound until its slice has run out
 * at least once (schedule gives it a new one and moves it to the end of its
 * queue); each fork halves the counter a child starts with, so two generations
 * in it has at most a few ticks left */
static int rr_spinner(void *arg)
{
    volatile u32 sink = 0;
    u32 start;
    long generation = (long)arg, pid;
    int status = 0;
    if (generation > 0) {
        pid = wl_spawn(rr_spinner, (void *)(generation - 1));
        if (pid < 0 || wl_wait((int)pid, &status) < 0)
            return 100;
        return wl_status_code(status);
    }
    if (sys3(NR_setpriority, PRIO_PROCESS, 0, 19) < 0 || set_scheduler(0, SCHED_RR, 1) < 0)
        return 101;
    start = ticks();
    while (ticks() - start < 4)
        sink++;
    return (int)sys1(NR_sched_getscheduler, 0);
}

static int rr_slice(struct part *p)
{
    int status = 0;
    long pid = TRY(p, "rr-fork", wl_spawn(rr_spinner, (void *)2));
    TRY(p, "rr-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status)); /* SCHED_RR */
    return 0;
}

/* --- a local descriptor table ------------------------------------------------ */

#define NR_modify_ldt 123

struct ldt_entry {
    u32 entry_number;
    u32 base_addr;
    u32 limit;
    u32 flags; /* seg_32bit:1 contents:2 read_exec_only:1 limit_in_pages:1 seg_not_present:1 useable:1 */
};

/* a child with an LDT of its own bounces bytes with its parent (which has none):
 * every switch between them loads one LDT or the other (switch_mm in schedule) */
static int ldt_bouncer(void *arg)
{
    struct two_pipes *tp = arg;
    struct ldt_entry entry;
    static u8 table[64];
    u8 byte;
    long n;
    sys_close(tp->there[1]);
    sys_close(tp->back[0]);
    memset(&entry, 0, sizeof(entry));
    entry.entry_number = 1;
    entry.limit = 0xfffff;
    entry.flags = 0x1 | 0x10; /* 32-bit data, limit in pages */
    if (sys3(NR_modify_ldt, 1, (long)&entry, sizeof(entry)) < 0)
        return 1;
    n = sys3(NR_modify_ldt, 0, (long)table, sizeof(table)); /* the table read back: 2 entries */
    while (wl_read_full(tp->there[0], &byte, 1) == 1) {
        byte = (u8)(byte + 3);
        if (wl_write_full(tp->back[1], &byte, 1) != 1)
            return 2;
    }
    return (int)(n + table[8] + table[15]);
}

static int ldt_switches(struct part *p)
{
    static const struct bounce_steps steps = {"ldt-pipe", "ldt-fork", "ldt-write", "ldt-read", "ldt-wait"};
    return bounce(p, ldt_bouncer, 20, &steps);
}

int part_sched(struct part *p)
{
    if (policies(p) || refusals(p) || switches(p) || herd(p) || cpu_bound(p) || timeouts(p) || other_user(p)
        || rr_slice(p) || ldt_switches(p))
        return -1;
    return 0;
}
