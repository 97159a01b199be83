/* trapsplice guest init: pid 1 of the 2.4.20 guest, serving a line protocol on
 * the serial console.
 *
 *   request:  <id> <command> [args...]\n        (id: decimal, chosen by the host)
 *   reply:    @<id> ok key=value ...  |  @<id> err <message>     (exactly one)
 *   unsolicited: @ready proto=1 kernel=<release>, @event <name> key=value ...
 * Lines not starting with '@' are kernel printk noise to the host.
 *
 * pid 1 must never exit (the kernel panics), so every failure becomes an
 * `err` reply or an @event line.
 */
#include "commands.h"
#include "workload.h"

#define REQUEST_MAX_BYTES 512

static const struct command commands[] = {
    {"ping", cmd_ping, "ping"},
    {"uname", cmd_uname, "uname"},
    {"bench", cmd_bench, "bench getpid|null|jmp N"},
    {"tcp-mss", cmd_tcp_mss, "tcp-mss"},
    {"user-int", cmd_user_int, "user-int V"},
    {"netenv", cmd_netenv, "netenv fer=<decimal>"},
    {"workload", cmd_workload, "workload [align=TICKS] [part...]"},
    {"help", cmd_help, "help"},
};
#define COMMAND_COUNT (sizeof(commands) / sizeof(commands[0]))

static void append_command_names(struct line *l)
{
    u32 i;
    for (i = 0; i < COMMAND_COUNT; i++) {
        if (i)
            line_str(l, ",");
        line_str(l, commands[i].name);
    }
}

int cmd_help(struct request *req)
{
    line_str(&req->reply, " commands=");
    append_command_names(&req->reply);
    return 0;
}

int fail(struct request *req, const char *message)
{
    line_reset(&req->reply);
    line_str(&req->reply, message);
    return -1;
}

int fail_errno(struct request *req, const char *message, long ret)
{
    fail(req, message);
    line_str(&req->reply, " (errno ");
    line_i32(&req->reply, -ret);
    line_str(&req->reply, ")");
    return -1;
}

/* --- boot-time setup ------------------------------------------------------ */

static int fd_is_open(int fd)
{
    return sys_fcntl(fd, F_GETFD, 0) >= 0;
}

/* The kernel hands init /dev/console as fds 0-2 only if the node exists. */
static void open_console(void)
{
    int fd;
    if (!fd_is_open(0)) {
        long ret = sys_open("/dev/console", O_RDWR | O_NOCTTY, 0);
        if (ret < 0) {
            sys_mkdir("/dev", 0755);
            sys_mknod("/dev/console", S_IFCHR | 0600, MKDEV16(5, 1));
            ret = sys_open("/dev/console", O_RDWR | O_NOCTTY, 0);
        }
        if (ret > 0) {
            sys_dup2((int)ret, 0);
            sys_close((int)ret);
        }
    }
    for (fd = 1; fd <= 2; fd++)
        if (!fd_is_open(fd))
            sys_dup2(0, fd);
}

/* raw, no echo: the host must see only replies, and bytes arrive unmangled */
static long console_raw(void)
{
    struct kernel_termios t;
    long ret = sys_ioctl(0, TCGETS, &t);
    if (ret < 0)
        return ret;
    t.c_iflag &= ~(u32)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    t.c_oflag &= ~(u32)OPOST; /* replies end in a bare '\n' */
    t.c_lflag &= ~(u32)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    t.c_cflag = (t.c_cflag & ~(u32)(CSIZE | PARENB)) | CS8;
    t.c_cc[VMIN] = 1;
    t.c_cc[VTIME] = 0;
    return sys_ioctl(0, TCSETS, &t);
}

static void mount_proc(void)
{
    long ret;
    sys_mkdir("/proc", 0555);
    ret = sys_mount("proc", "/proc", "proc", 0, 0);
    if (ret < 0)
        emit_event("proc-mount-failed", "errno", -ret);
}

static void print_banner(void)
{
    static struct utsname uts;
    static struct line l;
    line_reset(&l);
    line_str(&l, "@ready proto=1 kernel=");
    line_token(&l, sys_uname(&uts) < 0 ? "unknown" : uts.release);
    line_emit(&l);
}

/* --- request handling ----------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* split in place; returns the token count, or -1 if there are too many */
static int tokenize(char *text, char **tokens, int max)
{
    int n = 0;
    for (;;) {
        while (is_space(*text))
            text++;
        if (!*text)
            return n;
        if (n == max)
            return -1;
        tokens[n++] = text;
        while (*text && !is_space(*text))
            text++;
        if (*text)
            *text++ = '\0';
    }
}

static const struct command *find_command(const char *name)
{
    u32 i;
    for (i = 0; i < COMMAND_COUNT; i++)
        if (str_eq(commands[i].name, name))
            return &commands[i];
    return 0;
}

static void handle_request(char *text)
{
    static struct request req;
    static struct line out;
    char *tokens[MAX_ARGS + 1];
    const struct command *command;
    int count = tokenize(text, tokens, MAX_ARGS + 1), ok;

    if (count == 0)
        return; /* blank lines are how the host resyncs */
    if (!is_decimal(tokens[0]) || str_len(tokens[0]) > 18) {
        emit_event("bad-request", 0, 0); /* no id to answer to */
        return;
    }
    req.id = tokens[0];
    line_reset(&req.reply);
    if (count < 0) {
        ok = fail(&req, "too many arguments");
    } else if (count == 1) {
        ok = fail(&req, "empty request: expected <id> <command> [args...]");
    } else if (!(command = find_command(tokens[1]))) {
        ok = fail(&req, "unknown command '");
        line_token(&req.reply, tokens[1]);
        line_str(&req.reply, "' (known: ");
        append_command_names(&req.reply);
        line_str(&req.reply, ")");
        ok = -1;
    } else {
        u32 i;
        req.argc = count - 1;
        for (i = 0; i < (u32)req.argc; i++)
            req.argv[i] = tokens[i + 1];
        ok = command->handler(&req);
    }

    line_reset(&out);
    line_str(&out, "@");
    line_str(&out, req.id);
    line_str(&out, ok == 0 ? " ok" : " err ");
    memcpy(out.text + out.len, req.reply.text,
           req.reply.len < LINE_MAX_BYTES - 1 - out.len ? req.reply.len : LINE_MAX_BYTES - 1 - out.len);
    out.len += req.reply.len < LINE_MAX_BYTES - 1 - out.len ? req.reply.len : LINE_MAX_BYTES - 1 - out.len;
    line_emit(&out);
}

static __attribute__((noreturn)) void serve_forever(void)
{
    static char request[REQUEST_MAX_BYTES + 1];
    static char chunk[256];
    static const struct timespec32 backoff = {0, 100000000}; /* 100 ms */
    u32 used = 0;
    int overflowed = 0;
    for (;;) {
        long n = sys_read(0, chunk, sizeof(chunk)), i;
        if (n == -EINTR)
            continue;
        if (n <= 0) {
            sys_nanosleep(&backoff); /* console gone or hung up: don't spin */
            continue;
        }
        for (i = 0; i < n; i++) {
            char c = chunk[i];
            if (c == '\n' || c == '\r') {
                if (overflowed)
                    emit_event("bad-request", "too_long", 1);
                else {
                    request[used] = '\0';
                    handle_request(request);
                }
                used = 0;
                overflowed = 0;
            } else if (used < REQUEST_MAX_BYTES) {
                request[used++] = c;
            } else {
                overflowed = 1;
            }
        }
    }
}

/* sp: the initial stack, argc then argv[] and envp[] (each 0-terminated) */
void init_main(u32 *sp)
{
    long ret;
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    /* /init exec'd again by the workload: a child program, never the protocol */
    if (sys_getpid() != 1)
        child_main(argc, argv, argv + argc + 1);
    open_console();
    ret = console_raw();
    if (ret < 0)
        emit_event("console-raw-failed", "errno", -ret);
    mount_proc();
    ret = loopback_up();
    if (ret < 0)
        emit_event("loopback-failed", "errno", -ret);
    print_banner();
    serve_forever();
}

/* Entry from the kernel: no libc.  Hand the initial stack pointer (argc,
 * argv, envp) to init_main on a 16-byte aligned stack; never return. */
__asm__(".globl _start\n"
        "_start:\n\t"
        "xorl %ebp, %ebp\n\t"
        "movl %esp, %eax\n\t"
        "andl $-16, %esp\n\t"
        "subl $12, %esp\n\t"
        "pushl %eax\n\t"
        "call init_main\n"
        "1:\tjmp 1b\n");
