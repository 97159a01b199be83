/* workload parts `tcp`, `udp`, `unix`: sockets over loopback and AF_UNIX. */
#include "workload.h"

#define TCP_BULK_BYTES (2u << 20)
#define TCP_UP_SEED 0x7c900001u
#define TCP_DOWN_SEED 0x7c900002u
#define TCP_SHORT_CONNECTIONS 10
#define UDP_DATAGRAMS 120
#define UDP_RETRIES 4
#define UDP_WAIT_MS 1000
#define UNIX_BULK_BYTES (512u * 1024u)
#define UNIX_SEED 0x0a1b0001u

long wl_sock6(int call, long a, long b, long c, long d, long e, long f)
{
    long args[6];
    args[0] = a;
    args[1] = b;
    args[2] = c;
    args[3] = d;
    args[4] = e;
    args[5] = f;
    return sys_socketcall(call, args);
}

long wl_sock(int call, long a, long b, long c, long d, long e)
{
    return wl_sock6(call, a, b, c, d, e, 0);
}

long wl_socket(int family, int type, int protocol)
{
    return wl_sock(SYS_SOCKET, family, type, protocol, 0, 0);
}

long wl_setsockopt_int(int fd, int level, int name, int value)
{
    return wl_sock(SYS_SETSOCKOPT, fd, level, name, (long)&value, sizeof(value));
}

long wl_getsockopt_int(int fd, int level, int name, int *value)
{
    int len = sizeof(*value);
    *value = 0;
    return wl_sock(SYS_GETSOCKOPT, fd, level, name, (long)value, (long)&len);
}

u16 wl_htons(u16 v)
{
    return (u16)((v >> 8) | (v << 8));
}

static void loopback_addr(struct sockaddr_in *addr, u16 port_be)
{
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_addr = LOOPBACK_ADDR;
    addr->sin_port = port_be;
}

/* a socket bound to 127.0.0.1:<ephemeral>; its address in *addr */
static long bound_socket(int type, struct sockaddr_in *addr)
{
    int len = sizeof(*addr);
    long fd = wl_socket(AF_INET, type, 0), ret;
    if (fd < 0)
        return fd;
    loopback_addr(addr, 0);
    ret = wl_sock(SYS_BIND, fd, (long)addr, sizeof(*addr), 0, 0);
    if (ret >= 0)
        ret = wl_sock(SYS_GETSOCKNAME, fd, (long)addr, (long)&len, 0, 0);
    if (ret < 0) {
        sys_close((int)fd);
        return ret;
    }
    return fd;
}

static long send_step(int fd, const u8 *data, u32 len)
{
    return wl_sock(SYS_SEND, fd, (long)data, len, 0, 0);
}

/* through send(2), not write(2): the socket call's own path */
static long send_all(int fd, const u8 *data, u32 len)
{
    return wl_put_full(send_step, fd, data, len);
}

/* send `total` bytes of the pattern in chunks of varying size */
static long send_pattern(int fd, u32 total, u32 seed)
{
    static const u32 chunks[] = {65536, 1, 1460, 16384, 100000, 7, 32768, 4096};
    u32 sent = 0, i = 0;
    long n;
    while (sent < total) {
        u32 size = chunks[i++ % (sizeof(chunks) / sizeof(chunks[0]))];
        if (size > total - sent)
            size = total - sent;
        wl_fill(wl_buffer, size, seed, sent);
        n = send_all(fd, wl_buffer, size);
        if (n < 0)
            return n;
        sent += size;
    }
    return (long)sent;
}

/* receive to EOF into a stream check */
static long receive_stream(int fd, struct stream_check *check)
{
    long n;
    for (;;) {
        n = wl_sock(SYS_RECV, fd, (long)wl_buffer2, 50000, 0, 0);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return n;
        stream_update(check, wl_buffer2, (u32)n);
    }
}

/* --- tcp ------------------------------------------------------------------------ */

struct tcp_server {
    long listener;
    int result[2];
};

struct tcp_server_result {
    struct stream_check up;
    u32 short_hash;
    int nodelay, sndbuf;
    long error;
};

static int tcp_server(void *arg)
{
    static struct tcp_server_result result;
    struct tcp_server *server = arg;
    long fd, n;
    int i;
    u8 msg[128];

    memset(&result, 0, sizeof(result));
    stream_init(&result.up, TCP_UP_SEED);
    fd = wl_sock(SYS_ACCEPT, server->listener, 0, 0, 0, 0);
    if (fd < 0) {
        result.error = fd;
        goto out;
    }
    wl_setsockopt_int((int)fd, IPPROTO_TCP, TCP_NODELAY, 1);
    wl_getsockopt_int((int)fd, IPPROTO_TCP, TCP_NODELAY, &result.nodelay);
    wl_setsockopt_int((int)fd, SOL_SOCKET, SO_SNDBUF, 65535);
    wl_getsockopt_int((int)fd, SOL_SOCKET, SO_SNDBUF, &result.sndbuf);
    n = receive_stream((int)fd, &result.up); /* the client shuts down its side at the end */
    if (n < 0)
        result.error = n - 1000;
    n = send_pattern((int)fd, TCP_BULK_BYTES, TCP_DOWN_SEED);
    if (n < 0)
        result.error = n - 2000;
    sys_close((int)fd);
    /* short connections: read a message, answer it reversed, close */
    for (i = 0; i < TCP_SHORT_CONNECTIONS; i++) {
        u32 j, len;
        fd = wl_sock(SYS_ACCEPT, server->listener, 0, 0, 0, 0);
        if (fd < 0) {
            result.error = fd - 3000;
            break;
        }
        len = (u32)wl_read_full((int)fd, msg, 64 + (u32)i);
        for (j = 0; j < len / 2; j++) {
            u8 t = msg[j];
            msg[j] = msg[len - 1 - j];
            msg[len - 1 - j] = t;
        }
        result.short_hash = result.short_hash * 31 + wl_fnv32(msg, len);
        send_all((int)fd, msg, len);
        sys_close((int)fd);
    }
out:
    wl_write_full(server->result[1], &result, sizeof(result));
    return 0;
}

int part_tcp(struct part *p)
{
    static struct tcp_server server;
    static struct tcp_server_result result;
    struct sockaddr_in addr, peer, refused;
    struct stream_check down;
    int status = 0, value, i, len;
    long client, pid, dead;
    u8 msg[128];
    struct {
        int on, seconds;
    } linger;

    server.listener = TRY(p, "tcp-listener", bound_socket(SOCK_STREAM, &addr));
    TRY(p, "tcp-reuse", wl_setsockopt_int((int)server.listener, SOL_SOCKET, SO_REUSEADDR, 1));
    TRY(p, "tcp-listen", wl_sock(SYS_LISTEN, server.listener, 4, 0, 0, 0));
    TRY(p, "tcp-pipe", sys_pipe(server.result));
    pid = TRY(p, "tcp-fork", wl_spawn(tcp_server, &server));

    client = TRY(p, "tcp-socket", wl_socket(AF_INET, SOCK_STREAM, 0));
    TRY(p, "tcp-sndbuf", wl_setsockopt_int((int)client, SOL_SOCKET, SO_SNDBUF, 65535));
    TRY(p, "tcp-rcvbuf", wl_setsockopt_int((int)client, SOL_SOCKET, SO_RCVBUF, 65535));
    TRY(p, "tcp-connect", wl_sock(SYS_CONNECT, client, (long)&addr, sizeof(addr), 0, 0));
    TRY(p, "tcp-getsndbuf", wl_getsockopt_int((int)client, SOL_SOCKET, SO_SNDBUF, &value));
    wl_mix(p, (u32)value);
    TRY(p, "tcp-gettype", wl_getsockopt_int((int)client, SOL_SOCKET, SO_TYPE, &value));
    wl_mix(p, (u32)value);
    TRY(p, "tcp-keepalive", wl_setsockopt_int((int)client, SOL_SOCKET, SO_KEEPALIVE, 1));
    TRY(p, "tcp-getkeepalive", wl_getsockopt_int((int)client, SOL_SOCKET, SO_KEEPALIVE, &value));
    wl_mix(p, (u32)value);
    TRY(p, "tcp-maxseg", wl_getsockopt_int((int)client, IPPROTO_TCP, TCP_MAXSEG, &value));
    wl_mix(p, (u32)value);
    len = sizeof(peer);
    TRY(p, "tcp-getpeername", wl_sock(SYS_GETPEERNAME, client, (long)&peer, (long)&len, 0, 0));
    wl_mix(p, peer.sin_port == addr.sin_port && peer.sin_addr == addr.sin_addr);

    TRY(p, "tcp-send", send_pattern((int)client, TCP_BULK_BYTES, TCP_UP_SEED));
    TRY(p, "tcp-shutdown", wl_sock(SYS_SHUTDOWN, client, SHUT_WR, 0, 0, 0));
    wl_mix(p, (u32)wl_sock(SYS_SEND, client, (long)"x", 1, MSG_DONTWAIT | MSG_NOSIGNAL, 0)); /* -EPIPE */
    stream_init(&down, TCP_DOWN_SEED);
    TRY(p, "tcp-recv", receive_stream((int)client, &down));
    stream_mix(p, &down);
    sys_close((int)client);

    for (i = 0; i < TCP_SHORT_CONNECTIONS; i++) {
        u32 n = 64 + (u32)i, j;
        client = TRY(p, "short-socket", wl_socket(AF_INET, SOCK_STREAM, 0));
        TRY(p, "short-connect", wl_sock(SYS_CONNECT, client, (long)&addr, sizeof(addr), 0, 0));
        for (j = 0; j < n; j++)
            msg[j] = (u8)(i * 13 + j);
        TRY(p, "short-send", send_all((int)client, msg, n));
        /* peek first, then take it */
        TRY(p, "short-wait", wl_wait_readable((int)client, 5000));
        wl_mix(p, wl_sock(SYS_RECV, client, (long)msg, 1, MSG_PEEK, 0) == 1);
        CHECK(p, "short-recv", wl_read_full((int)client, msg, n) == (long)n, i);
        wl_mix(p, wl_fnv32(msg, n));
        if (i == TCP_SHORT_CONNECTIONS - 1) { /* abortive close: RST instead of FIN */
            linger.on = 1;
            linger.seconds = 0;
            TRY(p, "short-linger", wl_sock(SYS_SETSOCKOPT, client, SOL_SOCKET, SO_LINGER, (long)&linger,
                                          sizeof(linger)));
        }
        sys_close((int)client);
    }

    CHECK(p, "tcp-result", wl_read_full(server.result[0], &result, sizeof(result)) == sizeof(result), 0);
    TRY(p, "tcp-wait", wl_wait((int)pid, &status));
    stream_mix(p, &result.up);
    wl_mix(p, result.short_hash);
    wl_mix(p, (u32)result.nodelay);
    wl_mix(p, (u32)result.sndbuf);
    wl_mix(p, (u32)result.error);
    wl_mix(p, (u32)wl_status_code(status));
    sys_close((int)server.listener);
    sys_close(server.result[0]);
    sys_close(server.result[1]);

    /* a bound port nobody listens on answers a connect with RST */
    dead = TRY(p, "refused-bind", bound_socket(SOCK_STREAM, &refused));
    client = TRY(p, "refused-socket", wl_socket(AF_INET, SOCK_STREAM, 0));
    wl_mix(p, (u32)wl_sock(SYS_CONNECT, client, (long)&refused, sizeof(refused), 0, 0));
    sys_close((int)client);
    sys_close((int)dead);
    return 0;
}

/* --- udp ------------------------------------------------------------------------ */

/* echo every datagram back with each byte inverted; a 1-byte "q" ends it */
static int udp_echo(void *arg)
{
    long fd = *(long *)arg, n;
    struct sockaddr_in from;
    int len;
    u32 i;
    for (;;) {
        len = sizeof(from);
        n = wl_sock6(SYS_RECVFROM, fd, (long)wl_buffer, 65536, 0, (long)&from, (long)&len);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return 1;
        if (n == 1 && wl_buffer[0] == 'q')
            return 0;
        for (i = 0; i < (u32)n; i++)
            wl_buffer[i] ^= 0xff;
        if (wl_sock6(SYS_SENDTO, fd, (long)wl_buffer, n, 0, (long)&from, len) != n)
            return 2;
    }
}

static u32 udp_size(u32 i)
{
    static const u32 sizes[] = {1, 64, 512, 1400, 1472, 1473, 4000, 8192, 16000, 300, 60000, 33000};
    return sizes[i % (sizeof(sizes) / sizeof(sizes[0]))] + i / 12;
}

int part_udp(struct part *p)
{
    static long server_fd;
    struct sockaddr_in server, client_addr;
    struct msghdr32 msg;
    struct iovec32 iov[3];
    u32 i, j, size, h = 0, resends = 0;
    int status = 0, value;
    long client, pid, n;

    server_fd = TRY(p, "udp-server", bound_socket(SOCK_DGRAM, &server));
    TRY(p, "udp-server-rcvbuf", wl_setsockopt_int((int)server_fd, SOL_SOCKET, SO_RCVBUF, 65535));
    TRY(p, "udp-server-sndbuf", wl_setsockopt_int((int)server_fd, SOL_SOCKET, SO_SNDBUF, 65535));
    pid = TRY(p, "udp-fork", wl_spawn(udp_echo, &server_fd));
    client = TRY(p, "udp-client", bound_socket(SOCK_DGRAM, &client_addr));
    TRY(p, "udp-rcvbuf", wl_setsockopt_int((int)client, SOL_SOCKET, SO_RCVBUF, 65535));
    TRY(p, "udp-sndbuf", wl_setsockopt_int((int)client, SOL_SOCKET, SO_SNDBUF, 65535));
    TRY(p, "udp-getrcvbuf", wl_getsockopt_int((int)client, SOL_SOCKET, SO_RCVBUF, &value));
    wl_mix(p, (u32)value);
    TRY(p, "udp-connect", wl_sock(SYS_CONNECT, client, (long)&server, sizeof(server), 0, 0));

    for (i = 0; i < UDP_DATAGRAMS; i++) {
        u32 attempt, matched = 0;
        size = udp_size(i);
        wl_fill(wl_buffer2, size, i, 0);
        wl_buffer2[0] = (u8)i; /* sequence, to drop a late echo of an earlier one */
        for (attempt = 0; attempt < UDP_RETRIES && !matched; attempt++) {
            if (i % 3 == 0) { /* sendmsg with three pieces */
                memset(&msg, 0, sizeof(msg));
                iov[0].base = wl_buffer2;
                iov[0].len = size / 3;
                iov[1].base = wl_buffer2 + size / 3;
                iov[1].len = size / 3;
                iov[2].base = wl_buffer2 + 2 * (size / 3);
                iov[2].len = size - 2 * (size / 3);
                msg.iov = iov;
                msg.iovlen = 3;
                n = wl_sock(SYS_SENDMSG, client, (long)&msg, 0, 0, 0);
            } else {
                n = wl_sock(SYS_SEND, client, (long)wl_buffer2, size, 0, 0);
            }
            CHECK(p, "udp-send", n == (long)size, n);
            if (attempt)
                resends++;
            while (!matched && wl_wait_readable((int)client, UDP_WAIT_MS) > 0) {
                static u8 echo[65536];
                n = TRY(p, "udp-recv", wl_sock(SYS_RECV, client, (long)echo, sizeof(echo), 0, 0));
                if (n != (long)size || (u8)(echo[0] ^ 0xff) != (u8)i)
                    continue; /* an earlier datagram's late echo */
                for (j = 0; j < size; j++)
                    echo[j] ^= 0xff;
                matched = 1;
                h = h * 31 + wl_fnv32(echo, size);
                wl_mix(p, (u32)n);
            }
        }
        CHECK(p, "udp-echo", matched, i);
    }
    wl_mix(p, h);
    (void)resends; /* how many were resent depends on timing: not in the hash */
    /* peek at a datagram's head, then read it with recvmsg */
    TRY(p, "udp-send-peek", wl_sock(SYS_SEND, client, (long)"peekaboo", 8, 0, 0));
    TRY(p, "udp-wait-peek", wl_wait_readable((int)client, UDP_WAIT_MS));
    {
        u8 head[4], body[16];
        n = TRY(p, "udp-peek", wl_sock(SYS_RECV, client, (long)head, sizeof(head), MSG_PEEK, 0));
        wl_mix_bytes(p, head, (u32)n);
        memset(&msg, 0, sizeof(msg));
        iov[0].base = body;
        iov[0].len = 3;
        iov[1].base = body + 3;
        iov[1].len = sizeof(body) - 3;
        msg.iov = iov;
        msg.iovlen = 2;
        n = TRY(p, "udp-recvmsg", wl_sock(SYS_RECVMSG, client, (long)&msg, 0, 0, 0));
        wl_mix_bytes(p, body, (u32)n);
    }
    TRY(p, "udp-quit", wl_sock(SYS_SEND, client, (long)"q", 1, 0, 0));
    TRY(p, "udp-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    sys_close((int)client);
    sys_close((int)server_fd);
    return 0;
}

/* --- unix ------------------------------------------------------------------------- */

struct unix_pair {
    int stream[2];
    int dgram[2];
};

/* writes bulk data, then the datagrams, then whatever fd it is sent */
static int unix_peer(void *arg)
{
    struct unix_pair *up = arg;
    static u8 control[64];
    struct msghdr32 msg;
    struct iovec32 iov;
    u8 byte;
    u32 i;
    int passed;
    sys_close(up->stream[0]);
    sys_close(up->dgram[0]);
    if (send_pattern(up->stream[1], UNIX_BULK_BYTES, UNIX_SEED) < 0)
        return 1;
    for (i = 0; i < 40; i++) {
        u32 size = 1 + i * 97;
        wl_fill(wl_buffer, size, i, 0);
        if (wl_sock(SYS_SEND, up->dgram[1], (long)wl_buffer, size, 0, 0) != (long)size)
            return 2;
    }
    /* receive a descriptor (SCM_RIGHTS) and write through it */
    memset(&msg, 0, sizeof(msg));
    iov.base = &byte;
    iov.len = 1;
    msg.iov = &iov;
    msg.iovlen = 1;
    msg.control = control;
    msg.controllen = sizeof(control);
    if (wl_sock(SYS_RECVMSG, up->stream[1], (long)&msg, 0, 0, 0) != 1)
        return 3;
    passed = *(int *)(control + 12); /* struct cmsghdr: len, level, type, then the fd */
    if (wl_write_full(passed, "passed!", 7) != 7)
        return 4;
    return 0;
}

/* sockets made and closed in numbers: socket, inode, file and dentry objects */
static int many_sockets(struct part *p)
{
    static int fds[320];
    int pair[2];
    u32 i, made = 0;
    for (i = 0; i < 100; i++) {
        fds[made++] = (int)TRY(p, "many-udp", wl_socket(AF_INET, i % 5 ? SOCK_DGRAM : SOCK_STREAM, 0));
        TRY(p, "many-pair", wl_sock(SYS_SOCKETPAIR, AF_UNIX, i % 2 ? SOCK_STREAM : SOCK_DGRAM, 0, (long)pair, 0));
        fds[made++] = pair[0];
        fds[made++] = pair[1];
    }
    for (i = 0; i < made; i++)
        sys_close(fds[i]);
    wl_mix(p, made);
    return 0;
}

static int unix_listener(struct part *p)
{
    static const char path[] = "/wl.sock";
    struct {
        u16 family;
        char path[108];
    } addr;
    long listener, client, server;
    u8 buf[16];
    sys_unlink(path);
    memset(&addr, 0, sizeof(addr));
    addr.family = AF_UNIX;
    memcpy(addr.path, path, sizeof(path));
    listener = TRY(p, "ul-socket", wl_socket(AF_UNIX, SOCK_STREAM, 0));
    TRY(p, "ul-bind", wl_sock(SYS_BIND, listener, (long)&addr, sizeof(addr), 0, 0));
    TRY(p, "ul-listen", wl_sock(SYS_LISTEN, listener, 2, 0, 0, 0));
    client = TRY(p, "ul-client", wl_socket(AF_UNIX, SOCK_STREAM, 0));
    TRY(p, "ul-connect", wl_sock(SYS_CONNECT, client, (long)&addr, sizeof(addr), 0, 0));
    server = TRY(p, "ul-accept", wl_sock(SYS_ACCEPT, listener, 0, 0, 0, 0));
    TRY(p, "ul-send", send_all((int)client, (const u8 *)"over a path", 11));
    CHECK(p, "ul-recv", wl_read_full((int)server, buf, 11) == 11, 0);
    wl_mix_bytes(p, buf, 11);
    sys_close((int)client);
    sys_close((int)server);
    sys_close((int)listener);
    TRY(p, "ul-unlink", sys_unlink(path));
    return 0;
}

int part_unix(struct part *p)
{
    static struct unix_pair up;
    static u8 control[16];
    struct stream_check check;
    struct msghdr32 msg;
    struct iovec32 iov;
    int pipe_fds[2], status = 0;
    u32 i, h = 0;
    long pid, n;
    u8 passed[8];

    TRY(p, "unix-pair", wl_sock(SYS_SOCKETPAIR, AF_UNIX, SOCK_STREAM, 0, (long)up.stream, 0));
    TRY(p, "unix-dgram", wl_sock(SYS_SOCKETPAIR, AF_UNIX, SOCK_DGRAM, 0, (long)up.dgram, 0));
    pid = TRY(p, "unix-fork", wl_spawn(unix_peer, &up));
    sys_close(up.stream[1]);
    sys_close(up.dgram[1]);
    stream_init(&check, UNIX_SEED);
    while (check.bytes < UNIX_BULK_BYTES) {
        n = TRY(p, "unix-recv", wl_sock(SYS_RECV, up.stream[0], (long)wl_buffer2,
                                        UNIX_BULK_BYTES - check.bytes < 40000 ? UNIX_BULK_BYTES - check.bytes
                                                                              : 40000, 0, 0));
        CHECK(p, "unix-eof", n > 0, check.bytes);
        stream_update(&check, wl_buffer2, (u32)n);
    }
    stream_mix(p, &check);
    for (i = 0; i < 40; i++) {
        n = TRY(p, "unix-dgram-recv", wl_sock(SYS_RECV, up.dgram[0], (long)wl_buffer2, 8192, 0, 0));
        h = h * 31 + wl_fnv32(wl_buffer2, (u32)n);
    }
    wl_mix(p, h);
    /* pass the write end of a pipe to the peer (SCM_RIGHTS) */
    TRY(p, "unix-pipe", sys_pipe(pipe_fds));
    memset(&msg, 0, sizeof(msg));
    iov.base = "f";
    iov.len = 1;
    msg.iov = &iov;
    msg.iovlen = 1;
    ((u32 *)control)[0] = 16; /* cmsg_len */
    ((u32 *)control)[1] = SOL_SOCKET;
    ((u32 *)control)[2] = SCM_RIGHTS;
    ((int *)control)[3] = pipe_fds[1];
    msg.control = control;
    msg.controllen = 16;
    TRY(p, "unix-sendmsg", wl_sock(SYS_SENDMSG, up.stream[0], (long)&msg, 0, 0, 0));
    sys_close(pipe_fds[1]);
    n = TRY(p, "unix-passed", wl_read_full(pipe_fds[0], passed, 7));
    wl_mix_bytes(p, passed, (u32)n);
    sys_close(pipe_fds[0]);
    TRY(p, "unix-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    sys_close(up.stream[0]);
    sys_close(up.dgram[0]);
    TRY(p, "remount-rw", wl_root_writable(1)); /* the socket's name lives in the root */
    n = unix_listener(p);
    TRY(p, "remount-ro", wl_root_writable(0));
    if (n || many_sockets(p))
        return -1;
    return 0;
}
