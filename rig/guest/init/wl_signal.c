/* workload part `signal`: handlers (old and rt frames), kill with pipe
 * handshakes, SIGCHLD, blocking and pending, queued rt signals, sigsuspend,
 * pause, interval timers, alarm, stop/continue.  Every count is fixed by a
 * handshake or by blocking, never by timing. */
#include "workload.h"

__asm__(".globl wl_sigreturn\n"
        "wl_sigreturn:\n\t"
        "popl %eax\n\t"
        "movl $119, %eax\n\t"   /* sigreturn */
        "int $0x80\n"
        ".globl wl_rt_sigreturn\n"
        "wl_rt_sigreturn:\n\t"
        "movl $173, %eax\n\t"   /* rt_sigreturn */
        "int $0x80\n");

long wl_handle(int sig, void *handler, u32 flags)
{
    struct ksigaction act;
    act.handler = handler;
    act.flags = flags | SA_RESTORER;
    act.restorer = (flags & SA_SIGINFO) ? wl_rt_sigreturn : wl_sigreturn;
    sigset_clear(&act.mask);
    return sys_rt_sigaction(sig, &act, 0);
}

long wl_sigmask(int how, int sig)
{
    ksigset set;
    sigset_clear(&set);
    sigset_add(&set, sig);
    return sys_rt_sigprocmask(how, &set, 0);
}

/* the old sigaction(2) and its struct, for the non-rt path */
struct old_sigaction {
    void *handler;
    u32 mask;
    u32 flags;
    void (*restorer)(void);
};

static volatile u32 usr1_count, usr2_count, term_count, alarm_count, vtalrm_count, prof_count;
static volatile u32 chld_count, chld_info, rt_count, rt_values, reset_count;

static void on_usr1(int sig) { (void)sig; usr1_count++; }
static void on_usr2(int sig) { (void)sig; usr2_count++; }
static void on_term(int sig) { (void)sig; term_count++; }
static void on_alarm(int sig) { (void)sig; alarm_count++; }
static void on_vtalrm(int sig) { (void)sig; vtalrm_count++; }
static void on_prof(int sig) { (void)sig; prof_count++; }
static void on_reset(int sig) { (void)sig; reset_count++; }

static void on_chld(int sig, struct ksiginfo *info, void *context)
{
    (void)sig;
    (void)context;
    chld_count++;
    chld_info = chld_info * 31 + (u32)(info->si_code * 1000 + info->value); /* value: si_status */
}

static void on_rt(int sig, struct ksiginfo *info, void *context)
{
    (void)context;
    rt_count++;
    rt_values = rt_values * 31 + (u32)(sig * 100 + info->value);
}

/* --- kill with a handshake -------------------------------------------------- */

struct handshake {
    int to_child[2];
    int to_parent[2];
};

/* counts SIGUSR1 (rt handler) and SIGUSR2 (old sigaction, non-rt frame); after
 * each delivery acks with the running total; SIGTERM ends it */
static int receiver(void *arg)
{
    struct handshake *hs = arg;
    struct old_sigaction old;
    ksigset block, empty;
    u8 ack;
    sigset_clear(&block);
    sigset_add(&block, SIGUSR1);
    sigset_add(&block, SIGUSR2);
    sigset_add(&block, SIGTERM);
    sys_rt_sigprocmask(SIG_BLOCK, &block, 0);
    wl_handle(SIGUSR1, on_usr1, 0);
    old.handler = on_usr2;
    old.mask = 0;
    old.flags = SA_RESTORER;
    old.restorer = wl_sigreturn;
    if (sys3(NR_sigaction, SIGUSR2, (long)&old, 0) < 0)
        return 90;
    wl_handle(SIGTERM, on_term, 0);
    ack = 0;
    wl_write_full(hs->to_parent[1], &ack, 1); /* ready */
    sigset_clear(&empty);
    while (!term_count) {
        sys_rt_sigsuspend(&empty);
        ack = (u8)(usr1_count + 16 * usr2_count);
        if (!term_count && wl_write_full(hs->to_parent[1], &ack, 1) != 1)
            return 91;
    }
    return (int)(usr1_count + usr2_count);
}

static int kill_handshake(struct part *p)
{
    static struct handshake hs;
    int i, status = 0;
    u8 ack;
    long pid;
    TRY(p, "hs-pipe", sys_pipe(hs.to_child));
    TRY(p, "hs-pipe", sys_pipe(hs.to_parent));
    pid = TRY(p, "hs-fork", wl_spawn(receiver, &hs));
    CHECK(p, "hs-ready", wl_read_full(hs.to_parent[0], &ack, 1) == 1, 0);
    wl_mix(p, (u32)sys_kill((int)pid, 0)); /* exists */
    for (i = 0; i < 40; i++) {
        TRY(p, "hs-kill", sys_kill((int)pid, i % 4 == 3 ? SIGUSR2 : SIGUSR1));
        CHECK(p, "hs-ack", wl_read_full(hs.to_parent[0], &ack, 1) == 1, i);
        wl_mix(p, ack);
    }
    TRY(p, "hs-term", sys_kill((int)pid, SIGTERM));
    TRY(p, "hs-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    wl_mix(p, (u32)sys_kill((int)pid, 0)); /* -ESRCH: reaped */
    for (i = 0; i < 2; i++) {
        sys_close(hs.to_child[i]);
        sys_close(hs.to_parent[i]);
    }
    return 0;
}

/* --- SIGCHLD, one per child, made exact by blocking it across each wait --- */

static int exit_code(void *arg)
{
    return (int)(long)arg;
}

static int sigchld(struct part *p)
{
    ksigset none;
    int i, status;
    long pid;
    sigset_clear(&none);
    TRY(p, "chld-block", wl_sigmask(SIG_BLOCK, SIGCHLD));
    TRY(p, "chld-handle", wl_handle(SIGCHLD, on_chld, SA_SIGINFO | SA_NOCLDSTOP));
    for (i = 0; i < 5; i++) {
        pid = TRY(p, "chld-fork", wl_spawn(exit_code, (void *)(long)(20 + i)));
        TRY(p, "chld-wait", wl_wait((int)pid, &status));
        sys_rt_sigsuspend(&none); /* the pending SIGCHLD is delivered now */
    }
    TRY(p, "chld-default", wl_handle(SIGCHLD, (void *)SIG_DFL, 0));
    TRY(p, "chld-unblock", wl_sigmask(SIG_UNBLOCK, SIGCHLD));
    wl_mix(p, chld_count);
    wl_mix(p, chld_info);
    return 0;
}

/* --- blocked, pending, queued ------------------------------------------------ */

static int queued(struct part *p)
{
    struct ksiginfo info;
    struct timespec32 none = {0, 0};
    ksigset set, rt_only, pending;
    int sig = SIGRTMIN + 1, i, self = (int)sys_getpid();
    long got;

    sigset_clear(&set);
    sigset_add(&set, sig);
    sigset_add(&set, SIGUSR2);
    sigset_clear(&rt_only);
    sigset_add(&rt_only, sig);
    TRY(p, "q-block", sys_rt_sigprocmask(SIG_BLOCK, &set, 0));
    for (i = 0; i < 5; i++) {
        memset(&info, 0, sizeof(info));
        info.si_signo = sig;
        info.si_code = -1; /* SI_QUEUE */
        info.value = 100 + i;
        TRY(p, "q-queue", sys_rt_sigqueueinfo(self, sig, &info));
    }
    for (i = 0; i < 3; i++)
        TRY(p, "q-usr2", sys_kill(self, SIGUSR2)); /* not queued: one stays pending */
    TRY(p, "q-pending", sys_rt_sigpending(&pending));
    wl_mix(p, pending.bits[0]);
    wl_mix(p, pending.bits[1]);
    for (i = 0; i < 5; i++) {
        memset(&info, 0, sizeof(info));
        got = TRY(p, "q-timedwait", sys_rt_sigtimedwait(&rt_only, &info, &none));
        wl_mix(p, (u32)got);
        wl_mix(p, (u32)info.value);
    }
    /* the same again through a handler: all queued, delivered on unblock */
    TRY(p, "q-handle", wl_handle(sig, on_rt, SA_SIGINFO));
    TRY(p, "q-handle2", wl_handle(SIGUSR2, on_usr2, SA_NODEFER));
    for (i = 0; i < 3; i++) {
        memset(&info, 0, sizeof(info));
        info.si_signo = sig;
        info.si_code = -1;
        info.value = 200 + i;
        TRY(p, "q-queue2", sys_rt_sigqueueinfo(self, sig, &info));
    }
    usr2_count = 0;
    TRY(p, "q-unblock", sys_rt_sigprocmask(SIG_UNBLOCK, &set, 0));
    wl_mix(p, rt_count);
    wl_mix(p, rt_values);
    wl_mix(p, usr2_count); /* 3 sent, 1 delivered */
    /* a signal to oneself is delivered on the way out of kill() */
    usr1_count = 0;
    TRY(p, "self-handle", wl_handle(SIGUSR1, on_usr1, SA_RESTART));
    TRY(p, "self-kill", sys_kill(self, SIGUSR1));
    wl_mix(p, usr1_count);
    /* SA_RESETHAND: after one delivery the disposition is the default again */
    TRY(p, "reset-handle", wl_handle(SIGHUP, on_reset, SA_RESETHAND));
    TRY(p, "reset-kill", sys_kill(self, SIGHUP));
    {
        struct ksigaction now;
        TRY(p, "reset-query", sys_rt_sigaction(SIGHUP, 0, &now));
        wl_mix(p, (u32)(long)now.handler);
    }
    wl_mix(p, reset_count);
    /* the masks as /proc shows them: blocked, ignored and caught signals (not hashed) */
    TRY(p, "q-ignore", wl_handle(SIGINT, (void *)SIG_IGN, 0));
    TRY(p, "q-block-status", sys_rt_sigprocmask(SIG_BLOCK, &set, 0));
    wl_mix(p, wl_read_file("/proc/self/status", (char *)wl_buffer, WL_BUFFER_BYTES) > 0);
    TRY(p, "q-unblock-status", sys_rt_sigprocmask(SIG_UNBLOCK, &set, 0));
    return 0;
}

/* --- timers ---------------------------------------------------------------- */

static int timers(struct part *p)
{
    struct itimerval32 timer, old;
    volatile u32 spin;
    u32 i;
    long left;

    /* ITIMER_REAL every 10 ms, five deliveries counted by pause() */
    TRY(p, "real-handle", wl_handle(SIGALRM, on_alarm, 0));
    memset(&timer, 0, sizeof(timer));
    timer.interval.tv_usec = 10000;
    timer.value.tv_usec = 10000;
    TRY(p, "real-set", sys_setitimer(ITIMER_REAL, &timer, 0));
    while (alarm_count < 5)
        sys0(NR_pause);
    memset(&timer, 0, sizeof(timer));
    TRY(p, "real-stop", sys_setitimer(ITIMER_REAL, &timer, &old));
    wl_mix(p, (u32)old.interval.tv_usec);
    TRY(p, "real-get", sys2(NR_getitimer, ITIMER_REAL, (long)&old));
    wl_mix(p, (u32)(old.value.tv_sec | old.value.tv_usec));

    /* virtual and profiling time: burn CPU until each has fired once */
    TRY(p, "virt-handle", wl_handle(SIGVTALRM, on_vtalrm, 0));
    TRY(p, "prof-handle", wl_handle(SIGPROF, on_prof, 0));
    memset(&timer, 0, sizeof(timer));
    timer.value.tv_usec = 20000;
    TRY(p, "virt-set", sys_setitimer(ITIMER_VIRTUAL, &timer, 0));
    TRY(p, "prof-set", sys_setitimer(ITIMER_PROF, &timer, 0));
    for (i = 0, spin = 0; (vtalrm_count == 0 || prof_count == 0) && i < 2000000000u; i++)
        spin += i;
    wl_mix(p, vtalrm_count);
    wl_mix(p, prof_count);

    /* alarm(2) cancelled at once: 2 s (rounded up) were left */
    TRY(p, "alarm", sys1(NR_alarm, 2));
    left = sys1(NR_alarm, 0);
    wl_mix(p, (u32)left);

    /* nanosleep runs out; a zero one returns at once */
    wl_sleep_ms(5);
    {
        struct timespec32 zero = {0, 0};
        wl_mix(p, (u32)sys_nanosleep(&zero));
    }
    return 0;
}

/* --- stop and continue --------------------------------------------------------- */

static int sleeper(void *unused)
{
    (void)unused;
    for (;;)
        sys0(NR_pause);
    return 0; /* not reached; gcc wants it all the same */
}

static int stop_continue(struct part *p)
{
    int status = 0;
    long pid = TRY(p, "stop-fork", wl_spawn(sleeper, 0));
    TRY(p, "stop-kill", sys_kill((int)pid, SIGSTOP));
    TRY(p, "stop-wait", sys_wait4((int)pid, &status, WUNTRACED, 0));
    wl_mix(p, (u32)status); /* 0x137f: stopped by SIGSTOP */
    TRY(p, "cont-kill", sys_kill((int)pid, SIGCONT));
    TRY(p, "kill-kill", sys_kill((int)pid, SIGKILL));
    TRY(p, "kill-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

/* --- a signal ends a sleep in a driver ----------------------------------------- */

#define TIOCMIWAIT 0x545C
#define TIOCGICOUNT 0x545D
#define TIOCM_CAR 0x040
#define TIOCM_RNG 0x080
#define TIOCM_DSR 0x100
#define TIOCM_CTS 0x020

/* TIOCMIWAIT on the serial console's port sleeps (interruptible_sleep_on) until
 * a modem line changes, which none does here; SIGALRM from an interval timer,
 * its handler without SA_RESTART, ends it with -EINTR.  The port is opened on a
 * descriptor of the part's own (no controlling tty, no wait for carrier); the
 * console's settings are not touched (the port's modem-status interrupt stays
 * enabled afterwards: harmless, no line ever changes). */
static int modem_wait(struct part *p)
{
    static u32 icount[16];
    struct itimerval32 soon, off;
    long fd, ret;
    memset(&soon, 0, sizeof(soon));
    memset(&off, 0, sizeof(off));
    soon.value.tv_usec = 20000;
    fd = TRY(p, "ttyS0-open", sys_open("/dev/ttyS0", O_RDWR | O_NOCTTY | O_NONBLOCK, 0));
    wl_mix(p, (u32)sys_ioctl((int)fd, TIOCGICOUNT, icount)); /* 0; the counts themselves vary */
    alarm_count = 0;
    ret = wl_handle(SIGALRM, on_alarm, 0);
    if (ret >= 0)
        ret = sys_setitimer(ITIMER_REAL, &soon, 0);
    if (ret >= 0) {
        ret = sys_ioctl((int)fd, TIOCMIWAIT, (void *)(TIOCM_RNG | TIOCM_DSR | TIOCM_CAR | TIOCM_CTS));
        sys_setitimer(ITIMER_REAL, &off, 0);
        wl_mix(p, (u32)ret); /* -EINTR */
        wl_mix(p, alarm_count);
        ret = 0;
    }
    sys_close((int)fd);
    return ret < 0 ? wl_fail(p, "modem-wait", ret) : 0;
}

/* /proc/self/status renders the blocked set (SigBlk) one hex digit per four signals */
static int status_sigsets(struct part *p)
{
    static char text[2048];
    ksigset set, old;
    long n, i;
    sigset_clear(&set);
    sigset_add(&set, SIGINT);
    sigset_add(&set, 3); /* SIGQUIT */
    sigset_add(&set, 4); /* SIGILL: digit e */
    sigset_add(&set, SIGUSR2);
    sigset_add(&set, SIGRTMIN + 3);
    TRY(p, "ss-block", sys_rt_sigprocmask(SIG_BLOCK, &set, &old));
    n = wl_read_file("/proc/self/status", text, sizeof(text) - 1);
    TRY(p, "ss-unblock", sys_rt_sigprocmask(SIG_SETMASK, &old, 0));
    CHECK(p, "ss-read", n > 0, n);
    text[n] = 0;
    for (i = 0; i + 7 < n; i++)
        if (str_starts(text + i, "SigBlk:")) {
            long end = i;
            while (end < n && text[end] != '\n')
                end++;
            wl_mix_bytes(p, text + i, (u32)(end - i));
            return 0;
        }
    return wl_fail(p, "ss-sigblk", n);
}

int part_signal(struct part *p)
{
    if (kill_handshake(p) || sigchld(p) || queued(p) || timers(p) || stop_continue(p) || modem_wait(p)
        || status_sigsets(p))
        return -1;
    return 0;
}
