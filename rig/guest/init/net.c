/* Loopback bring-up at boot and the `tcp-mss` command. */
#include "commands.h"
#include "workload.h" /* wl_sock: the socketcall argument block */

#define LOOPBACK_ADDR 0x0100007fu /* 127.0.0.1 in network byte order */
#define LOOPBACK_MASK 0x000000ffu /* 255.0.0.0 */

static long socket_open(int type)
{
    return wl_sock(SYS_SOCKET, AF_INET, type, 0, 0, 0);
}

static void fill_ifreq_addr(struct ifreq *ifr, u32 addr)
{
    memset(ifr, 0, sizeof(*ifr));
    memcpy(ifr->ifr_name, "lo", 3);
    ifr->u.addr.sin_family = AF_INET;
    ifr->u.addr.sin_addr = addr;
}

/* lo = 127.0.0.1/8, up.  Returns 0 or the failing call's -errno. */
long loopback_up(void)
{
    struct ifreq ifr;
    long fd = socket_open(SOCK_DGRAM), ret;
    if (fd < 0)
        return fd;
    fill_ifreq_addr(&ifr, LOOPBACK_ADDR);
    ret = sys_ioctl((int)fd, SIOCSIFADDR, &ifr);
    if (ret >= 0) {
        fill_ifreq_addr(&ifr, LOOPBACK_MASK);
        ret = sys_ioctl((int)fd, SIOCSIFNETMASK, &ifr);
    }
    if (ret >= 0) {
        memset(&ifr, 0, sizeof(ifr));
        memcpy(ifr.ifr_name, "lo", 3);
        ret = sys_ioctl((int)fd, SIOCGIFFLAGS, &ifr);
        if (ret >= 0) {
            ifr.u.flags |= IFF_UP | IFF_RUNNING;
            ret = sys_ioctl((int)fd, SIOCSIFFLAGS, &ifr);
        }
    }
    sys_close((int)fd);
    return ret < 0 ? ret : 0;
}

static long tcp_maxseg(long fd, long *mss)
{
    int value = 0, len = sizeof(value);
    long ret = wl_sock(SYS_GETSOCKOPT, fd, IPPROTO_TCP, TCP_MAXSEG, (long)&value, (long)&len);
    *mss = value;
    return ret;
}

/* Non-blocking, so a handshake that never completes (a lost segment on lo) is
 * an `err` reply and not a pid 1 stuck in connect() or accept() forever. */
static long set_nonblocking(long fd)
{
    long flags = sys_fcntl((int)fd, F_GETFL, 0);
    return flags < 0 ? flags : sys_fcntl((int)fd, F_SETFL, flags | O_NONBLOCK);
}

#define ACCEPT_WAIT_STEPS 200 /* x 10 ms */

static long accept_within(long listener, int steps)
{
    static const struct timespec32 step = {0, 10000000};
    for (;;) {
        long fd = wl_sock(SYS_ACCEPT, listener, 0, 0, 0, 0);
        if (fd != -EAGAIN || steps-- <= 0)
            return fd;
        sys_nanosleep(&step);
    }
}

static void close_if_open(long fd)
{
    if (fd >= 0)
        sys_close((int)fd);
}

/* listener on 127.0.0.1:<ephemeral>, connect, accept; report TCP_MAXSEG of both ends */
int cmd_tcp_mss(struct request *req)
{
    struct sockaddr_in addr;
    int addr_len = sizeof(addr);
    long listener = -1, client = -1, server = -1, ret;
    long client_mss = 0, server_mss = 0;
    const char *failed = 0;
    u16 port;

    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr = LOOPBACK_ADDR;

    listener = socket_open(SOCK_STREAM);
    if (listener < 0) {
        ret = listener;
        failed = "tcp-mss: socket failed";
    } else if ((ret = wl_sock(SYS_BIND, listener, (long)&addr, sizeof(addr), 0, 0)) < 0) {
        failed = "tcp-mss: bind 127.0.0.1:0 failed";
    } else if ((ret = wl_sock(SYS_LISTEN, listener, 1, 0, 0, 0)) < 0) {
        failed = "tcp-mss: listen failed";
    } else if ((ret = wl_sock(SYS_GETSOCKNAME, listener, (long)&addr, (long)&addr_len, 0, 0)) < 0) {
        failed = "tcp-mss: getsockname failed";
    } else if ((client = ret = socket_open(SOCK_STREAM)) < 0) {
        failed = "tcp-mss: client socket failed";
    } else if ((ret = set_nonblocking(client)) < 0 || (ret = set_nonblocking(listener)) < 0) {
        failed = "tcp-mss: fcntl(O_NONBLOCK) failed";
    } else if ((ret = wl_sock(SYS_CONNECT, client, (long)&addr, sizeof(addr), 0, 0)) < 0
               && ret != -EINPROGRESS) {
        failed = "tcp-mss: connect failed (is lo up?)";
    } else if ((server = ret = accept_within(listener, ACCEPT_WAIT_STEPS)) < 0) {
        failed = ret == -EAGAIN ? "tcp-mss: handshake did not complete within 2 s (see Ip InHdrErrors in /proc/net/snmp)"
                                : "tcp-mss: accept failed";
    } else if ((ret = tcp_maxseg(client, &client_mss)) < 0) {
        failed = "tcp-mss: getsockopt(client, TCP_MAXSEG) failed";
    } else if ((ret = tcp_maxseg(server, &server_mss)) < 0) {
        failed = "tcp-mss: getsockopt(server, TCP_MAXSEG) failed";
    }
    close_if_open(server);
    close_if_open(client);
    close_if_open(listener);
    if (failed)
        return fail_errno(req, failed, ret);

    port = (u16)((addr.sin_port >> 8) | (addr.sin_port << 8));
    line_kv_i32(&req->reply, "client", client_mss);
    line_kv_i32(&req->reply, "server", server_mss);
    line_kv_u64(&req->reply, "port", port);
    return 0;
}
