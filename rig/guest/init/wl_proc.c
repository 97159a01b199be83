/* workload part `fork`: fork, exec, exit and wait4 in their common forms. */
#include "workload.h"

#define CLONE_VM 0x00000100u
#define CLONE_FS 0x00000200u
#define CLONE_FILES 0x00000400u

/* wl_clone(flags, stack_top, fn, arg): clone(2) onto a stack of our own; the
 * child calls fn(arg) there and exits with its result */
long wl_clone(u32 flags, void *stack_top, int (*fn)(void *), void *arg);
__asm__(".globl wl_clone\n"
        "wl_clone:\n\t"
        "pushl %ebx\n\t"
        "movl 8(%esp), %ebx\n\t"     /* flags */
        "movl 12(%esp), %ecx\n\t"    /* child stack */
        "movl 16(%esp), %edx\n\t"    /* fn */
        "movl 20(%esp), %eax\n\t"    /* arg */
        "subl $8, %ecx\n\t"
        "movl %eax, 4(%ecx)\n\t"
        "movl %edx, 0(%ecx)\n\t"
        "movl $120, %eax\n\t"
        "int $0x80\n\t"
        "testl %eax, %eax\n\t"
        "jnz 1f\n\t"
        "popl %edx\n\t"              /* child: fn, with arg on top of its stack */
        "call *%edx\n\t"
        "movl %eax, %ebx\n\t"
        "movl $1, %eax\n\t"
        "int $0x80\n"
        "1:\n\t"
        "popl %ebx\n\t"
        "ret\n");

static int exit_with(void *code)
{
    return (int)(long)code;
}

static int segfault(void *unused)
{
    (void)unused;
    *(volatile u32 *)0 = 1;
    return 1;
}

static int divide_by_zero(void *unused)
{
    volatile int zero = 0, one = 1;
    (void)unused;
    return one / zero;
}

/* each level forks the next and exits with its child's status + 1 */
static int process_chain(void *depth_arg)
{
    long depth = (long)depth_arg, pid;
    int status = 0;
    if (depth == 0)
        return 0;
    pid = wl_spawn(process_chain, (void *)(depth - 1));
    if (pid < 0 || wl_wait((int)pid, &status) < 0)
        return 200;
    return wl_status_code(status) + 1;
}

static volatile u32 clone_shared;
static u8 clone_stack[16384] __attribute__((aligned(16)));

static int clone_child(void *arg)
{
    clone_shared = (u32)(long)arg * 3; /* visible to the parent: CLONE_VM */
    return 5;
}

/* the orphan: waits for its parent to die (EOF on gone), then reports getppid() */
struct orphan_pipes {
    int gone[2];
    int report[2];
};

static int orphan_parent(void *arg)
{
    struct orphan_pipes *pipes = arg;
    long pid = sys_fork();
    if (pid == 0) {
        u8 byte;
        u32 parent;
        sys_close(pipes->gone[1]);
        wl_read_full(pipes->gone[0], &byte, 1); /* EOF when the parent has exited */
        parent = (u32)sys_getppid();
        wl_write_full(pipes->report[1], &parent, sizeof(parent));
        sys_exit(0);
    }
    return pid < 0 ? 1 : 0; /* exits at once, holding gone[1] until then */
}

static int spawn_and_code(struct part *p, char *const *args)
{
    int status = 0;
    long pid = TRY(p, "exec-spawn", wl_spawn_init(args, -1, -1));
    TRY(p, "exec-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

static int exec_sum(struct part *p)
{
    static char *args[] = {"/init", "sum", 0};
    int to_child[2], from_child[2], status = 0;
    u32 reply[2], sent;
    long pid;
    TRY(p, "sum-pipe", sys_pipe(to_child));
    TRY(p, "sum-pipe", sys_pipe(from_child));
    pid = TRY(p, "sum-spawn", wl_spawn_init(args, to_child[0], from_child[1]));
    sys_close(to_child[0]);
    sys_close(from_child[1]);
    for (sent = 0; sent < 65536; sent += 4096) {
        wl_fill(wl_buffer, 4096, 77, sent);
        TRY(p, "sum-write", wl_write_full(to_child[1], wl_buffer, 4096));
    }
    sys_close(to_child[1]);
    CHECK(p, "sum-read", wl_read_full(from_child[0], reply, sizeof(reply)) == sizeof(reply), 0);
    sys_close(from_child[0]);
    TRY(p, "sum-wait", wl_wait((int)pid, &status));
    wl_mix(p, reply[0]);
    wl_mix(p, reply[1]);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

int part_fork(struct part *p)
{
    static char *exit42[] = {"/init", "exit", "42", 0};
    static char *args[] = {"/init", "args", "alpha", "beta", "gamma", 0};
    static char *chain[] = {"/init", "chain", "5", 0};
    static char *raise_usr1[] = {"/init", "raise", "10", 0};
    static char *exit7[] = {"/init", "exit", "7", 0};
    static struct orphan_pipes orphan;
    long pids[16], pid;
    int status = 0, i;
    u32 sum = 0, parent = 0;

    /* fork and wait for each child by pid */
    for (i = 0; i < 16; i++)
        pids[i] = TRY(p, "fork", wl_spawn(exit_with, (void *)(long)(i * 3 + 1)));
    for (i = 0; i < 16; i++) {
        TRY(p, "wait4-pid", wl_wait((int)pids[i], &status));
        wl_mix(p, (u32)wl_status_code(status));
    }
    /* wait4(-1): any order, so mix order-free sums */
    for (i = 0; i < 8; i++)
        TRY(p, "fork-any", wl_spawn(exit_with, (void *)(long)(100 + i)));
    for (i = 0; i < 8; i++) {
        TRY(p, "wait4-any", wl_wait(-1, &status));
        sum += (u32)wl_status_code(status);
    }
    wl_mix(p, sum);
    wl_mix(p, (u32)sys_wait4(-1, &status, WNOHANG, 0)); /* -ECHILD: none left */

    /* deaths by signal */
    pid = TRY(p, "fork-segv", wl_spawn(segfault, 0));
    TRY(p, "wait-segv", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    pid = TRY(p, "fork-fpe", wl_spawn(divide_by_zero, 0));
    TRY(p, "wait-fpe", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));

    /* exec, with argv and envp, exec chains, death by its own signal */
    if (spawn_and_code(p, exit42) || spawn_and_code(p, args) || spawn_and_code(p, chain)
        || spawn_and_code(p, raise_usr1) || exec_sum(p))
        return -1;

    /* vfork + exec: the parent sleeps until the child has exec'd */
    pid = sys0(NR_vfork);
    if (pid == 0) {
        sys_execve("/init", exit7, exit7 + 3);
        sys_exit(127);
    }
    TRY(p, "vfork", pid);
    TRY(p, "vfork-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));

    /* clone sharing memory; exit signal SIGCHLD so plain wait4 sees it */
    clone_shared = 0;
    pid = TRY(p, "clone", wl_clone(CLONE_VM | CLONE_FS | CLONE_FILES | SIGCHLD,
                                   clone_stack + sizeof(clone_stack), clone_child, (void *)11));
    TRY(p, "clone-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    wl_mix(p, clone_shared);

    /* a chain of 6 processes, each waiting for the next */
    pid = TRY(p, "chain-fork", wl_spawn(process_chain, (void *)6));
    TRY(p, "chain-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));

    /* an orphan is re-parented to init (pid 1) */
    TRY(p, "orphan-pipe", sys_pipe(orphan.gone));
    TRY(p, "orphan-pipe", sys_pipe(orphan.report));
    pid = TRY(p, "orphan-fork", wl_spawn(orphan_parent, &orphan));
    sys_close(orphan.gone[0]);
    sys_close(orphan.gone[1]);
    sys_close(orphan.report[1]);
    TRY(p, "orphan-wait", wl_wait((int)pid, &status));
    CHECK(p, "orphan-report", wl_read_full(orphan.report[0], &parent, sizeof(parent)) == sizeof(parent), 0);
    sys_close(orphan.report[0]);
    wl_mix(p, parent);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}
