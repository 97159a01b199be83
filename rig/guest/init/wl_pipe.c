/* workload part `pipe`: bulk data, ping-pong, non-blocking fill, poll and select, EPIPE. */
#include "workload.h"

#define BULK_BYTES (256u * 1024u)
#define BULK_SEED 0x5eed0001u
#define PINGPONG_ROUNDS 300

struct pipe_pair {
    int data[2];
    int back[2];
};

/* write BULK_BYTES in chunk sizes that vary (odd ones too), then exit */
static int bulk_writer(void *arg)
{
    static const u32 chunks[] = {1, 100, 4095, 4096, 5000, 65536, 777, 12288};
    int fd = *(int *)arg;
    u32 sent = 0, i = 0;
    while (sent < BULK_BYTES) {
        u32 n = chunks[i++ % (sizeof(chunks) / sizeof(chunks[0]))];
        if (n > BULK_BYTES - sent)
            n = BULK_BYTES - sent;
        if (n > WL_BUFFER_BYTES)
            n = WL_BUFFER_BYTES;
        wl_fill(wl_buffer, n, BULK_SEED, sent);
        if (wl_write_full(fd, wl_buffer, n) != (long)n)
            return 1;
        sent += n;
    }
    return 0;
}

static int bulk(struct part *p)
{
    int fds[2], status = 0;
    struct stream_check check;
    long pid, n;
    TRY(p, "bulk-pipe", sys_pipe(fds));
    pid = TRY(p, "bulk-fork", wl_spawn(bulk_writer, &fds[1]));
    sys_close(fds[1]);
    stream_init(&check, BULK_SEED);
    for (;;) {
        n = sys_read(fds[0], wl_buffer2, 3000); /* reads that do not line up with writes */
        if (n == -EINTR)
            continue;
        TRY(p, "bulk-read", n);
        if (n == 0)
            break;
        stream_update(&check, wl_buffer2, (u32)n);
    }
    sys_close(fds[0]);
    TRY(p, "bulk-wait", wl_wait((int)pid, &status));
    stream_mix(p, &check);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

/* echo each message back with every byte + 1 */
static int echoer(void *arg)
{
    struct pipe_pair *pp = arg;
    u8 msg[64];
    u32 i;
    long n;
    sys_close(pp->data[1]);
    sys_close(pp->back[0]);
    for (;;) {
        n = wl_read_full(pp->data[0], msg, sizeof(msg));
        if (n == 0)
            return 0;
        if (n != sizeof(msg))
            return 1;
        for (i = 0; i < sizeof(msg); i++)
            msg[i]++;
        if (wl_write_full(pp->back[1], msg, sizeof(msg)) != sizeof(msg))
            return 2;
    }
}

static int pingpong(struct part *p)
{
    static struct pipe_pair pp;
    u8 msg[64];
    u32 round, i, h = 0;
    int status = 0;
    long pid;
    TRY(p, "pp-pipe", sys_pipe(pp.data));
    TRY(p, "pp-pipe", sys_pipe(pp.back));
    pid = TRY(p, "pp-fork", wl_spawn(echoer, &pp));
    sys_close(pp.data[0]);
    sys_close(pp.back[1]);
    for (round = 0; round < PINGPONG_ROUNDS; round++) {
        for (i = 0; i < sizeof(msg); i++)
            msg[i] = (u8)(round + i);
        TRY(p, "pp-write", wl_write_full(pp.data[1], msg, sizeof(msg)));
        CHECK(p, "pp-read", wl_read_full(pp.back[0], msg, sizeof(msg)) == sizeof(msg), round);
        h = h * 31 + wl_fnv32(msg, sizeof(msg));
    }
    sys_close(pp.data[1]);
    TRY(p, "pp-wait", wl_wait((int)pid, &status));
    sys_close(pp.back[0]);
    wl_mix(p, h);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

static int nonblocking_and_poll(struct part *p)
{
    int fds[2];
    long n, flags;
    u32 total = 0, fd_bits[1];
    struct pollfd32 pfd[2];
    struct timeval32 timeout;

    TRY(p, "nb-pipe", sys_pipe(fds));
    flags = TRY(p, "nb-getfl", sys_fcntl(fds[1], F_GETFL, 0));
    TRY(p, "nb-setfl", sys_fcntl(fds[1], F_SETFL, flags | O_NONBLOCK));
    /* empty: not readable within 20 ms (poll and select each time out) */
    wl_mix(p, (u32)wl_wait_readable(fds[0], 20));
    fd_bits[0] = 1u << fds[0];
    timeout.tv_sec = 0;
    timeout.tv_usec = 20000;
    wl_mix(p, (u32)sys_select(fds[0] + 1, fd_bits, 0, 0, &timeout));
    /* fill until EAGAIN: 2.4 pipes hold one page; 1000-byte writes are atomic */
    wl_fill(wl_buffer, 1000, 3, 0);
    for (;;) {
        n = sys_write(fds[1], wl_buffer, 1000);
        if (n == -EAGAIN)
            break;
        TRY(p, "nb-write", n);
        total += (u32)n;
        CHECK(p, "nb-fill", total < 65536, total);
    }
    wl_mix(p, total);
    pfd[0].fd = fds[0];
    pfd[0].events = POLLIN;
    pfd[1].fd = fds[1];
    pfd[1].events = POLLOUT;
    pfd[0].revents = pfd[1].revents = 0;
    wl_mix(p, (u32)sys_poll(pfd, 2, 0));
    wl_mix(p, (u32)pfd[0].revents | (u32)pfd[1].revents << 16);
    fd_bits[0] = 1u << fds[0];
    timeout.tv_usec = 0;
    wl_mix(p, (u32)sys_select(fds[0] + 1, fd_bits, 0, 0, &timeout));
    wl_mix(p, fd_bits[0] == 1u << fds[0]);
    n = TRY(p, "nb-drain", wl_read_full(fds[0], wl_buffer2, total));
    wl_mix(p, wl_fnv32(wl_buffer2, (u32)n));
    pfd[0].revents = pfd[1].revents = 0;
    wl_mix(p, (u32)sys_poll(pfd, 2, 0));
    wl_mix(p, (u32)pfd[0].revents | (u32)pfd[1].revents << 16);
    /* reader gone: EPIPE for the writer (SIGPIPE ignored here) */
    sys_close(fds[0]);
    TRY(p, "nb-ignore", wl_handle(SIGPIPE, (void *)SIG_IGN, 0));
    wl_mix(p, (u32)sys_write(fds[1], wl_buffer, 10));
    TRY(p, "nb-default", wl_handle(SIGPIPE, (void *)SIG_DFL, 0));
    sys_close(fds[1]);
    return 0;
}

/* the read end is closed everywhere before the fork */
static int write_to_closed(void *arg)
{
    sys_write(*(int *)arg, "x", 1); /* SIGPIPE, default action: dies */
    return 1;
}

/* four pipes, written in a fixed order by a child; poll collects them all */
static int writer_of_four(void *arg)
{
    int *fds = arg, k, round;
    u8 chunk[512];
    for (round = 0; round < 8; round++)
        for (k = 0; k < 4; k++) {
            wl_fill(chunk, sizeof(chunk), (u32)k, (u32)(round * 512));
            if (wl_write_full(fds[2 * k + 1], chunk, sizeof(chunk)) != sizeof(chunk))
                return 1;
        }
    return 0;
}

static int poll_four(struct part *p)
{
    int fds[8], k, status = 0, open_count = 4;
    struct pollfd32 pfd[4];
    struct stream_check checks[4];
    long pid, n;
    for (k = 0; k < 4; k++) {
        TRY(p, "poll4-pipe", sys_pipe(&fds[2 * k]));
        stream_init(&checks[k], (u32)k);
    }
    pid = TRY(p, "poll4-fork", wl_spawn(writer_of_four, fds));
    for (k = 0; k < 4; k++) {
        sys_close(fds[2 * k + 1]);
        pfd[k].fd = fds[2 * k];
        pfd[k].events = POLLIN;
    }
    while (open_count > 0) {
        for (k = 0; k < 4; k++)
            pfd[k].revents = 0;
        n = sys_poll(pfd, 4, 5000);
        if (n == -EINTR)
            continue;
        CHECK(p, "poll4-poll", n > 0, n);
        for (k = 0; k < 4; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP)))
                continue;
            n = TRY(p, "poll4-read", sys_read(pfd[k].fd, wl_buffer2, 700));
            if (n == 0) {
                sys_close(pfd[k].fd);
                pfd[k].fd = -1; /* poll skips negative fds */
                open_count--;
            } else {
                stream_update(&checks[k], wl_buffer2, (u32)n);
            }
        }
    }
    TRY(p, "poll4-wait", wl_wait((int)pid, &status));
    for (k = 0; k < 4; k++)
        stream_mix(p, &checks[k]);
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}

int part_pipe(struct part *p)
{
    int fds[2], status = 0;
    long pid;
    if (bulk(p) || pingpong(p) || nonblocking_and_poll(p) || poll_four(p))
        return -1;
    TRY(p, "sigpipe-pipe", sys_pipe(fds));
    sys_close(fds[0]);
    pid = TRY(p, "sigpipe-fork", wl_spawn(write_to_closed, &fds[1]));
    sys_close(fds[1]);
    TRY(p, "sigpipe-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    return 0;
}
