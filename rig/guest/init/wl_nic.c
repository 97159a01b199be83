/* workload part `nic`: real frames through both i82557b NICs (eepro100).
 *
 * eth0 and eth1 hang off one QEMU hub, which hands each frame to the other
 * port.  Without IP addresses the kernel sends nothing of its own; AF_PACKET
 * raw sockets with a private ethertype carry frames eth0 -> eth1 and echoes
 * back.  Losses are repaired by resending what is missing, so only payload
 * checksums and the set of frames delivered reach the hash, never how many
 * tries it took.  Also: promiscuous and multicast filters (set_rx_mode), MII
 * and ethtool ioctls, MTU, ifdown/ifup (speedo_close/speedo_open),
 * /proc/net/dev (get_stats).  Both interfaces end up (so the driver's 2 s
 * media timer runs from then on) with no extra flags: a later run starts from
 * the same state as any run after the first.
 */
#include "workload.h"

#define ETH_TYPE 0x88b5 /* local experimental ethertype */
#define ETH_HEADER 14
#define FRAME_MAGIC 0x74726170u
#define FRAMES 240
#define BURST_FRAMES 48
#define WINDOW 8
#define RESEND_ROUNDS 8
#define WAIT_MS 150

#define SIOCSIFMTU 0x8922
#define SIOCGIFMTU 0x8921
#define SIOCGIFHWADDR 0x8927
#define SIOCADDMULTI 0x8931
#define SIOCDELMULTI 0x8932
#define SIOCGIFINDEX 0x8933
#define SIOCGIFTXQLEN 0x8942
#define SIOCSIFTXQLEN 0x8943
#define SIOCETHTOOL 0x8946
#define SIOCGMIIPHY 0x8947
#define SIOCGMIIREG 0x8948
#define SIOCSMIIREG 0x8949
#define SIOCDEVPRIVATE 0x89f0
#define IFF_BROADCAST 0x2
#define IFF_PROMISC 0x100
#define IFF_ALLMULTI 0x200
#define ETHTOOL_GSET 1
#define ETHTOOL_SSET 2
#define ETHTOOL_GDRVINFO 3
#define ETHTOOL_GMSGLVL 7
#define ETHTOOL_SMSGLVL 8
#define ETHTOOL_NWAY_RST 9
#define ETHTOOL_GLINK 10
#define NETIF_MSG_RX_STATUS 0x0800
#define MSG_ALL 0xffffffffu
#define SOL_PACKET 263
#define PACKET_ADD_MEMBERSHIP 1
#define PACKET_DROP_MEMBERSHIP 2
#define PACKET_MR_MULTICAST 0
#define PACKET_MR_PROMISC 1
#define PACKET_MR_ALLMULTI 2
#define EMSGSIZE 90

/* struct ifreq with the union members this part needs */
struct nic_ifreq {
    char name[16];
    union {
        short flags;
        int ivalue;
        void *data;
        struct {
            u16 family;
            u8 addr[14];
        } hwaddr;
        struct {
            u16 phy_id, reg_num, val_in, val_out;
        } mii;
    } u;
};

struct sockaddr_ll {
    u16 family;
    u16 protocol;
    int ifindex;
    u16 hatype;
    u8 pkttype;
    u8 halen;
    u8 addr[8];
};

struct packet_mreq {
    int ifindex;
    u16 type;
    u16 alen;
    u8 address[8];
};

struct nic {
    const char *name;
    int index;
    u8 mac[6];
    long sock; /* AF_PACKET, bound to this interface and ETH_TYPE */
};

static long control_fd; /* an AF_INET datagram socket for the interface ioctls */

static long nic_ioctl(const char *name, u32 request, struct nic_ifreq *ifr)
{
    u32 i;
    memset(ifr->name, 0, sizeof(ifr->name));
    for (i = 0; name[i] && i < sizeof(ifr->name) - 1; i++)
        ifr->name[i] = name[i];
    return sys_ioctl((int)control_fd, request, ifr);
}

static long set_flags(const char *name, short set, short clear)
{
    struct nic_ifreq ifr;
    long ret;
    memset(&ifr, 0, sizeof(ifr));
    ret = nic_ioctl(name, SIOCGIFFLAGS, &ifr);
    if (ret < 0)
        return ret;
    ifr.u.flags = (short)((ifr.u.flags | set) & ~clear);
    return nic_ioctl(name, SIOCSIFFLAGS, &ifr);
}

static int ethtool(const char *name, void *data)
{
    struct nic_ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.u.data = data;
    return (int)nic_ioctl(name, SIOCETHTOOL, &ifr);
}

/* the driver's message level (sp->msg_enable: which netif_msg_* debug paths run) */
static long get_msglevel(const char *name, u32 *level)
{
    u32 value[2] = {ETHTOOL_GMSGLVL, 0};
    long ret = ethtool(name, value);
    if (ret >= 0)
        *level = value[1];
    return ret;
}

static long set_msglevel(const char *name, u32 level)
{
    u32 value[2] = {ETHTOOL_SMSGLVL, level};
    return ethtool(name, value);
}

static long packet_socket(struct nic *n)
{
    struct sockaddr_ll addr;
    long fd = wl_socket(AF_PACKET, SOCK_RAW, wl_htons(ETH_TYPE)), ret;
    if (fd < 0)
        return fd;
    memset(&addr, 0, sizeof(addr));
    addr.family = AF_PACKET;
    addr.protocol = wl_htons(ETH_TYPE);
    addr.ifindex = n->index;
    ret = wl_sock(SYS_BIND, fd, (long)&addr, sizeof(addr), 0, 0);
    if (ret >= 0)
        ret = wl_setsockopt_int((int)fd, SOL_SOCKET, SO_RCVBUF, 65535);
    if (ret < 0) {
        sys_close((int)fd);
        return ret;
    }
    n->sock = fd;
    return fd;
}

static int open_nic(struct part *p, struct nic *n)
{
    struct nic_ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    TRY(p, "ifindex", nic_ioctl(n->name, SIOCGIFINDEX, &ifr));
    n->index = ifr.u.ivalue;
    TRY(p, "hwaddr", nic_ioctl(n->name, SIOCGIFHWADDR, &ifr));
    wl_mix(p, ifr.u.hwaddr.family); /* ARPHRD_ETHER */
    memcpy(n->mac, ifr.u.hwaddr.addr, 6);
    TRY(p, "ifup", set_flags(n->name, IFF_UP, 0));
    TRY(p, "packet-socket", packet_socket(n));
    return 0;
}

/* --- frames ---------------------------------------------------------------- */

static u32 payload_size(u32 seq)
{
    static const u32 sizes[] = {50, 1500, 186, 187, 500, 1499, 64, 1024, 1200, 333, 1400, 90};
    return sizes[seq % (sizeof(sizes) / sizeof(sizes[0]))];
}

/* payload: magic, seq, size, then the pattern (inverted for echoes) */
static u32 build_frame(u8 *frame, const u8 *to, const u8 *from, u32 seq, u32 size, int echo)
{
    u32 i;
    memcpy(frame, to, 6);
    memcpy(frame + 6, from, 6);
    frame[12] = ETH_TYPE >> 8;
    frame[13] = ETH_TYPE & 0xff;
    *(u32 *)(frame + 14) = FRAME_MAGIC;
    *(u32 *)(frame + 18) = seq;
    *(u32 *)(frame + 22) = size;
    wl_fill(frame + 26, size - 12, seq * 7919u, 0);
    if (echo)
        for (i = 26; i < ETH_HEADER + size; i++)
            frame[i] ^= 0xa5;
    return ETH_HEADER + size;
}

/* a received frame of ours: its seq, or -1 (length and pattern checked) */
static long parse_frame(const u8 *frame, long len, int echo, u32 *digest)
{
    u32 seq, size, i;
    if (len < ETH_HEADER + 26 || *(const u32 *)(frame + 14) != FRAME_MAGIC)
        return -1;
    seq = *(const u32 *)(frame + 18);
    size = *(const u32 *)(frame + 22);
    if (size < 12 || (long)(ETH_HEADER + size) > len)
        return -1;
    for (i = 26; i < ETH_HEADER + size; i++)
        if ((u8)(frame[i] ^ (echo ? 0xa5 : 0)) != wl_pattern(seq * 7919u, i - 26))
            return -1;
    *digest = wl_fnv32(frame, ETH_HEADER + size);
    return (long)seq;
}

static long send_frame(long sock, const u8 *frame, u32 len)
{
    return wl_sock(SYS_SEND, sock, (long)frame, len, 0, 0);
}

/* send frames [first, first + count) from `from` to `to` until each has
 * arrived once; digests[] gets the checksum of each as received */
static int exchange(struct part *p, struct nic *from, struct nic *to, u32 first, u32 count, int echo,
                    u32 *digests)
{
    static u8 frame[2048], got[64];
    u32 i, seq, missing = count, digest;
    int round;
    long n, parsed;
    memset(got, 0, sizeof(got));
    for (round = 0; round < RESEND_ROUNDS && missing; round++) {
        for (i = 0; i < count; i++) {
            if (got[i])
                continue;
            seq = first + i;
            n = build_frame(frame, to->mac, from->mac, seq, payload_size(seq), echo);
            TRY(p, echo ? "echo-send" : "frame-send", send_frame(from->sock, frame, (u32)n));
        }
        while (missing && wl_wait_readable((int)to->sock, WAIT_MS) > 0) {
            n = TRY(p, "frame-recv", wl_sock(SYS_RECV, to->sock, (long)frame, sizeof(frame), 0, 0));
            parsed = parse_frame(frame, n, echo, &digest);
            if (parsed < (long)first || parsed >= (long)(first + count) || got[parsed - first])
                continue; /* not ours, or a duplicate of a resent one */
            got[parsed - first] = 1;
            digests[parsed - first] = digest;
            missing--;
        }
    }
    CHECK(p, echo ? "echo-missing" : "frame-missing", missing == 0, missing);
    return 0;
}

static int traffic(struct part *p, struct nic *a, struct nic *b, u32 frames, u32 window, u32 base)
{
    static u32 there[64], back[64];
    u32 first, i, count;
    for (first = 0; first < frames; first += window) {
        count = frames - first < window ? frames - first : window;
        if (exchange(p, a, b, base + first, count, 0, there) || exchange(p, b, a, base + first, count, 1, back))
            return -1;
        for (i = 0; i < count; i++) {
            wl_mix(p, there[i]);
            wl_mix(p, back[i]);
        }
    }
    return 0;
}

/* does a frame to `dest` reach b?  Answered without a timeout: a marker frame
 * to b's own address follows it, and frames arrive in order. */
static long reaches(struct part *p, struct nic *a, struct nic *b, const u8 *dest, u32 seq)
{
    static u8 frame[256];
    u32 digest, round;
    long n, parsed, seen = 0;
    for (round = 0; round < RESEND_ROUNDS; round++) {
        n = build_frame(frame, dest, a->mac, seq, 100, 0);
        TRY(p, "probe-send", send_frame(a->sock, frame, (u32)n));
        n = build_frame(frame, b->mac, a->mac, seq + 1, 100, 0);
        TRY(p, "marker-send", send_frame(a->sock, frame, (u32)n));
        while (wl_wait_readable((int)b->sock, WAIT_MS) > 0) {
            n = TRY(p, "probe-recv", wl_sock(SYS_RECV, b->sock, (long)frame, sizeof(frame), 0, 0));
            parsed = parse_frame(frame, n, 0, &digest);
            if (parsed == (long)seq)
                seen = 1;
            else if (parsed == (long)seq + 1)
                return seen;
        }
        seen = 0; /* the marker was lost: ask again */
    }
    return wl_fail(p, "marker-missing", (long)seq);
}

static long membership(struct nic *n, int option, u16 type, const u8 *addr)
{
    struct packet_mreq mreq;
    memset(&mreq, 0, sizeof(mreq));
    mreq.ifindex = n->index;
    mreq.type = type;
    if (addr) {
        mreq.alen = 6;
        memcpy(mreq.address, addr, 6);
    }
    return wl_sock(SYS_SETSOCKOPT, n->sock, SOL_PACKET, option, (long)&mreq, sizeof(mreq));
}

static long multicast(const char *name, u32 request, const u8 *addr)
{
    struct nic_ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    ifr.u.hwaddr.family = 0; /* AF_UNSPEC */
    memcpy(ifr.u.hwaddr.addr, addr, 6);
    return nic_ioctl(name, request, &ifr);
}

static int filters(struct part *p, struct nic *a, struct nic *b)
{
    static const u8 foreign[6] = {0x02, 0x00, 0x5e, 0x10, 0x20, 0x30};
    static const u8 broadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static u8 groups[6][6] = {
        {0x01, 0x00, 0x5e, 0x00, 0x00, 0x01}, {0x01, 0x00, 0x5e, 0x00, 0x00, 0x02},
        {0x01, 0x00, 0x5e, 0x00, 0x00, 0x03}, {0x01, 0x00, 0x5e, 0x00, 0x00, 0x04},
        {0x01, 0x00, 0x5e, 0x00, 0x00, 0x05}, {0x33, 0x33, 0x00, 0x00, 0x00, 0x01},
    };
    u32 seq = 10000, i;
    long r;

#define PROBE(dest)                                  \
    do {                                             \
        r = reaches(p, a, b, (dest), seq);           \
        if (r < 0)                                   \
            return -1;                               \
        wl_mix(p, (u32)r);                           \
        seq += 2;                                    \
    } while (0)

    PROBE(broadcast);
    PROBE(foreign);                                   /* filtered */
    TRY(p, "promisc-on", set_flags(b->name, IFF_PROMISC, 0));
    PROBE(foreign);                                   /* promiscuous: seen */
    TRY(p, "promisc-off", set_flags(b->name, 0, IFF_PROMISC));
    PROBE(groups[0]);
    TRY(p, "allmulti-on", set_flags(b->name, IFF_ALLMULTI, 0));
    PROBE(groups[0]);
    TRY(p, "allmulti-off", set_flags(b->name, 0, IFF_ALLMULTI));
    /* up to 3 groups fit the driver's short multicast command; more take a setup frame */
    for (i = 0; i < 6; i++) {
        TRY(p, "addmulti", multicast(b->name, SIOCADDMULTI, groups[i]));
        if (i == 1 || i == 5)
            PROBE(groups[i]);
    }
    PROBE(groups[3]);
    for (i = 0; i < 6; i++)
        TRY(p, "delmulti", multicast(b->name, SIOCDELMULTI, groups[i]));
    /* more groups than the driver's filter limit (64): it takes all multicast then */
    {
        u8 group[6] = {0x01, 0x00, 0x5e, 0x40, 0x00, 0x00};
        /* each setup frame's rx_status message has no log level: it would reach the console */
        TRY(p, "msglevel-quiet", set_msglevel(b->name, MSG_ALL & ~NETIF_MSG_RX_STATUS));
        for (i = 0; i < 70; i++) {
            group[5] = (u8)i;
            TRY(p, "addmulti-many", multicast(b->name, SIOCADDMULTI, group));
        }
        PROBE(groups[2]);
        for (i = 0; i < 70; i++) {
            group[5] = (u8)i;
            TRY(p, "delmulti-many", multicast(b->name, SIOCDELMULTI, group));
        }
        TRY(p, "msglevel-loud", set_msglevel(b->name, MSG_ALL));
    }
    wl_mix(p, (u32)multicast(b->name, SIOCDELMULTI, groups[0])); /* -ENOENT: gone */
    /* the same through the packet socket's memberships */
    TRY(p, "mr-promisc", membership(b, PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC, 0));
    PROBE(foreign);
    TRY(p, "mr-promisc-drop", membership(b, PACKET_DROP_MEMBERSHIP, PACKET_MR_PROMISC, 0));
    TRY(p, "mr-allmulti", membership(b, PACKET_ADD_MEMBERSHIP, PACKET_MR_ALLMULTI, 0));
    TRY(p, "mr-allmulti-drop", membership(b, PACKET_DROP_MEMBERSHIP, PACKET_MR_ALLMULTI, 0));
    TRY(p, "mr-multicast", membership(b, PACKET_ADD_MEMBERSHIP, PACKET_MR_MULTICAST, groups[4]));
    PROBE(groups[4]);
    TRY(p, "mr-multicast-drop", membership(b, PACKET_DROP_MEMBERSHIP, PACKET_MR_MULTICAST, groups[4]));
    PROBE(foreign);
#undef PROBE
    return 0;
}

/* --- ioctls ---------------------------------------------------------------- */

/* each ethtool command with a buffer the kernel cannot write (read-only page) or
 * read whole (it runs into an unmapped page): -EFAULT from each copy */
static int ethtool_faults(struct part *p, struct nic *n)
{
    static const u32 reads[] = {ETHTOOL_GDRVINFO, ETHTOOL_GSET, ETHTOOL_GLINK, ETHTOOL_GMSGLVL};
    static const u32 writes[] = {ETHTOOL_SSET, ETHTOOL_SMSGLVL};
    u8 *pages = sys_mmap(0, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    u32 i, *last;
    CHECK(p, "ef-mmap", !mmap_failed(pages), (long)pages);
    wl_mix(p, (u32)ethtool(n->name, 0)); /* not even the command can be read */
    for (i = 0; i < sizeof(reads) / sizeof(reads[0]); i++) {
        TRY(p, "ef-rw", sys_mprotect(pages, 4096, PROT_READ | PROT_WRITE));
        *(u32 *)pages = reads[i];
        TRY(p, "ef-ro", sys_mprotect(pages, 4096, PROT_READ));
        wl_mix(p, (u32)ethtool(n->name, pages));
    }
    TRY(p, "ef-rw2", sys_mprotect(pages, 4096, PROT_READ | PROT_WRITE));
    TRY(p, "ef-unmap", sys_munmap(pages + 4096, 4096));
    last = (u32 *)(pages + 4096 - 4); /* the command fits, the rest of the struct does not */
    for (i = 0; i < sizeof(writes) / sizeof(writes[0]); i++) {
        *last = writes[i];
        wl_mix(p, (u32)ethtool(n->name, last));
    }
    TRY(p, "ef-munmap", sys_munmap(pages, 4096));
    return 0;
}

static int device_ioctls(struct part *p, struct nic *n)
{
    static u8 info[256], settings[256];
    struct nic_ifreq ifr;
    u32 value[2], reg;
    int phy;

    memset(info, 0, sizeof(info));
    *(u32 *)info = ETHTOOL_GDRVINFO;
    TRY(p, "gdrvinfo", ethtool(n->name, info));
    wl_mix_str(p, (const char *)info + 4);  /* "eepro100" */
    wl_mix_str(p, (const char *)info + 36); /* its version string */
    memset(settings, 0, sizeof(settings));
    *(u32 *)settings = ETHTOOL_GSET;
    TRY(p, "gset", ethtool(n->name, settings));
    wl_mix_bytes(p, settings, 20);
    *(u32 *)settings = ETHTOOL_SSET; /* the same settings back */
    wl_mix(p, (u32)ethtool(n->name, settings));
    value[0] = ETHTOOL_GLINK;
    TRY(p, "glink", ethtool(n->name, value));
    wl_mix(p, value[1]);
    value[0] = ETHTOOL_GMSGLVL;
    TRY(p, "gmsglvl", ethtool(n->name, value));
    value[0] = ETHTOOL_SMSGLVL; /* unchanged */
    TRY(p, "smsglvl", ethtool(n->name, value));
    value[0] = ETHTOOL_NWAY_RST;
    wl_mix(p, (u32)ethtool(n->name, value));
    value[0] = 0x7777; /* unknown: -EOPNOTSUPP */
    wl_mix(p, (u32)ethtool(n->name, value));
    for (reg = 4; reg <= 6; reg++) { /* inside the driver's switch, handled by none: -EOPNOTSUPP */
        value[0] = reg;
        wl_mix(p, (u32)ethtool(n->name, value));
    }
    if (ethtool_faults(p, n))
        return -1;

    memset(&ifr, 0, sizeof(ifr));
    TRY(p, "miiphy", nic_ioctl(n->name, SIOCGMIIPHY, &ifr));
    phy = ifr.u.mii.phy_id;
    wl_mix(p, (u32)phy);
    for (reg = 2; reg <= 5; reg++) {
        memset(&ifr, 0, sizeof(ifr));
        ifr.u.mii.phy_id = (u16)phy;
        ifr.u.mii.reg_num = (u16)reg;
        TRY(p, "miireg", nic_ioctl(n->name, SIOCGMIIREG, &ifr));
        wl_mix(p, ifr.u.mii.val_out);
    }
    /* write the advertisement register with what it holds */
    ifr.u.mii.phy_id = (u16)phy;
    ifr.u.mii.reg_num = 4;
    TRY(p, "miireg4", nic_ioctl(n->name, SIOCGMIIREG, &ifr));
    ifr.u.mii.val_in = ifr.u.mii.val_out;
    TRY(p, "smiireg", nic_ioctl(n->name, SIOCSMIIREG, &ifr));

    /* the old private numbers for the same MII calls; one past them is refused */
    memset(&ifr, 0, sizeof(ifr));
    TRY(p, "devprivate", nic_ioctl(n->name, SIOCDEVPRIVATE, &ifr));
    ifr.u.mii.reg_num = 2;
    TRY(p, "devprivate1", nic_ioctl(n->name, SIOCDEVPRIVATE + 1, &ifr));
    wl_mix(p, ifr.u.mii.val_out);
    ifr.u.mii.reg_num = 4;
    TRY(p, "devprivate1-4", nic_ioctl(n->name, SIOCDEVPRIVATE + 1, &ifr));
    ifr.u.mii.val_in = ifr.u.mii.val_out;
    TRY(p, "devprivate2", nic_ioctl(n->name, SIOCDEVPRIVATE + 2, &ifr));
    wl_mix(p, (u32)nic_ioctl(n->name, SIOCDEVPRIVATE + 3, &ifr));

    memset(&ifr, 0, sizeof(ifr));
    TRY(p, "txqlen", nic_ioctl(n->name, SIOCGIFTXQLEN, &ifr));
    wl_mix(p, (u32)ifr.u.ivalue);
    TRY(p, "set-txqlen", nic_ioctl(n->name, SIOCSIFTXQLEN, &ifr));
    TRY(p, "mtu", nic_ioctl(n->name, SIOCGIFMTU, &ifr));
    wl_mix(p, (u32)ifr.u.ivalue);
    return 0;
}

/* a smaller MTU: a big frame is refused before the driver sees it */
static int mtu(struct part *p, struct nic *a, struct nic *b)
{
    static u8 frame[1600];
    struct nic_ifreq ifr;
    long n;
    memset(&ifr, 0, sizeof(ifr));
    ifr.u.ivalue = 1000;
    TRY(p, "set-mtu", nic_ioctl(a->name, SIOCSIFMTU, &ifr));
    n = build_frame(frame, b->mac, a->mac, 20000, 1200, 0);
    wl_mix(p, (u32)send_frame(a->sock, frame, (u32)n)); /* -EMSGSIZE */
    ifr.u.ivalue = 1500;
    TRY(p, "reset-mtu", nic_ioctl(a->name, SIOCSIFMTU, &ifr));
    return 0;
}

static void close_nic(struct nic *n)
{
    if (n->sock >= 0)
        sys_close((int)n->sock);
    n->sock = -1;
}

int part_nic(struct part *p)
{
    static struct nic a = {"eth0", 0, {0}, -1}, b = {"eth1", 0, {0}, -1};
    u32 level_a = 0, level_b = 0;
    long ret;
    control_fd = TRY(p, "control-socket", wl_socket(AF_INET, SOCK_DGRAM, 0));
    /* every debug message of the driver while the part runs (printk KERN_DEBUG: the log
     * buffer, below the console's level), the saved levels back at the end */
    if (get_msglevel(a.name, &level_a) < 0 || get_msglevel(b.name, &level_b) < 0)
        return wl_fail(p, "gmsglevel", 0);
    wl_mix(p, level_a); /* the driver's default, restored by every run */
    wl_mix(p, level_b);
    if (set_msglevel(a.name, MSG_ALL) < 0 || set_msglevel(b.name, MSG_ALL) < 0) {
        wl_fail(p, "smsglevel", 0);
        goto down;
    }
    if (open_nic(p, &a) || open_nic(p, &b))
        goto down;
    if (traffic(p, &a, &b, FRAMES, WINDOW, 0) || traffic(p, &a, &b, BURST_FRAMES, BURST_FRAMES, 1000)
        || filters(p, &a, &b) || device_ioctls(p, &a) || device_ioctls(p, &b) || mtu(p, &a, &b))
        goto down;
    /* ifdown/ifup of eth1 (close and reopen the driver), then traffic again */
    close_nic(&b);
    TRY(p, "ifdown", set_flags(b.name, 0, IFF_UP));
    wl_mix(p, (u32)set_flags(b.name, 0, IFF_UP)); /* already down: 0 */
    ret = wl_read_file("/proc/net/dev", (char *)wl_buffer, WL_BUFFER_BYTES); /* stats of a closed device */
    wl_mix(p, ret > 0);
    if (open_nic(p, &b) || traffic(p, &a, &b, 24, WINDOW, 2000))
        goto down;
    ret = wl_read_file("/proc/net/dev", (char *)wl_buffer, WL_BUFFER_BYTES);
    wl_mix(p, ret > 0);
down:
    close_nic(&a);
    close_nic(&b);
    /* both stay up: the driver's media timer (speedo_timer, every 2 s) runs
     * between and during later runs; the next run finds them as this one left them */
    set_flags("eth0", IFF_UP, IFF_PROMISC | IFF_ALLMULTI);
    set_flags("eth1", IFF_UP, IFF_PROMISC | IFF_ALLMULTI);
    if (set_msglevel(a.name, level_a) < 0 || set_msglevel(b.name, level_b) < 0)
        wl_fail(p, "msglevel-restore", 0);
    sys_close((int)control_fd);
    return p->failed ? -1 : 0;
}
