/* Raw Linux 2.4 i386 system calls for a freestanding init.
 *
 * No libc: today's libcs refuse to start on a 2.4 kernel, so every call goes
 * through `int $0x80` with the 2.4 i386 numbers (arch/i386/kernel/entry.S).
 * Sockets go through the multiplexed socketcall(2).  Calls return the raw
 * kernel value: -errno on failure.
 */
#ifndef TRAPSPLICE_SYS_H
#define TRAPSPLICE_SYS_H

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned short u16;
typedef unsigned char u8;

/* 2.4 i386 syscall numbers */
#define NR_exit       1
#define NR_fork       2
#define NR_read       3
#define NR_write      4
#define NR_open       5
#define NR_close      6
#define NR_mknod     14
#define NR_getpid    20
#define NR_mount     21
#define NR_mkdir     39
#define NR_ioctl     54
#define NR_fcntl     55
#define NR_dup2      63
#define NR_socketcall 102
#define NR_nanosleep 162
#define NR_wait4    114
#define NR_uname    122  /* newuname: struct new_utsname */

/* socketcall sub-calls (include/linux/net.h) */
#define SYS_SOCKET       1
#define SYS_BIND         2
#define SYS_CONNECT      3
#define SYS_LISTEN       4
#define SYS_ACCEPT       5
#define SYS_GETSOCKNAME  6
#define SYS_GETSOCKOPT  15

#define O_RDWR      2
#define O_NOCTTY    0400
#define F_GETFD     1
#define F_GETFL     3
#define F_SETFL     4
#define O_NONBLOCK  04000
#define EAGAIN      11
#define EINPROGRESS 115
#define S_IFCHR     0020000
#define S_IFDIR     0040000
#define EEXIST      17
#define EINTR       4

/* old 16-bit dev_t that 2.4's mknod(2) takes */
#define MKDEV16(major, minor) (((major) << 8) | (minor))

static inline long sys0(long nr)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr) : "memory");
    return ret;
}

static inline long sys1(long nr, long a)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr), "b"(a) : "memory");
    return ret;
}

static inline long sys2(long nr, long a, long b)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr), "b"(a), "c"(b) : "memory");
    return ret;
}

static inline long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

static inline long sys4(long nr, long a, long b, long c, long d)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr), "b"(a), "c"(b), "d"(c), "S"(d)
                     : "memory");
    return ret;
}

static inline long sys5(long nr, long a, long b, long c, long d, long e)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr), "b"(a), "c"(b), "d"(c), "S"(d),
                     "D"(e) : "memory");
    return ret;
}

static inline long sys_read(int fd, void *buf, u32 len) { return sys3(NR_read, fd, (long)buf, len); }
static inline long sys_write(int fd, const void *buf, u32 len) { return sys3(NR_write, fd, (long)buf, len); }
static inline long sys_open(const char *path, int flags, int mode) { return sys3(NR_open, (long)path, flags, mode); }
static inline long sys_close(int fd) { return sys1(NR_close, fd); }
static inline long sys_mknod(const char *path, int mode, int dev) { return sys3(NR_mknod, (long)path, mode, dev); }
static inline long sys_mkdir(const char *path, int mode) { return sys2(NR_mkdir, (long)path, mode); }
static inline long sys_getpid(void) { return sys0(NR_getpid); }
static inline long sys_ioctl(int fd, u32 req, void *arg) { return sys3(NR_ioctl, fd, req, (long)arg); }
static inline long sys_fcntl(int fd, int cmd, long arg) { return sys3(NR_fcntl, fd, cmd, arg); }
static inline long sys_dup2(int from, int to) { return sys2(NR_dup2, from, to); }
static inline long sys_fork(void) { return sys0(NR_fork); }
static inline long sys_wait4(int pid, int *status, int options, void *rusage)
{
    return sys4(NR_wait4, pid, (long)status, options, (long)rusage);
}
static inline long sys_mount(const char *src, const char *dst, const char *type, u32 flags, const void *data)
{
    return sys5(NR_mount, (long)src, (long)dst, (long)type, flags, (long)data);
}
static inline long sys_uname(void *utsname) { return sys1(NR_uname, (long)utsname); }
struct timespec32 { long tv_sec; long tv_nsec; };
static inline long sys_nanosleep(const struct timespec32 *req) { return sys2(NR_nanosleep, (long)req, 0); }
static inline long sys_socketcall(int call, long *args) { return sys2(NR_socketcall, call, (long)args); }

static inline __attribute__((noreturn)) void sys_exit(int code)
{
    for (;;)
        sys1(NR_exit, code);
}

/* struct new_utsname (include/linux/utsname.h) */
struct utsname {
    char sysname[65];
    char nodename[65];
    char release[65];
    char version[65];
    char machine[65];
    char domainname[65];
};

/* struct termios as the i386 kernel's TCGETS/TCSETS see it */
struct kernel_termios {
    u32 c_iflag;
    u32 c_oflag;
    u32 c_cflag;
    u32 c_lflag;
    u8 c_line;
    u8 c_cc[19];
};

#define TCGETS  0x5401
#define TCSETS  0x5402
#define IGNBRK  0000001
#define BRKINT  0000002
#define PARMRK  0000010
#define ISTRIP  0000040
#define INLCR   0000100
#define IGNCR   0000200
#define ICRNL   0000400
#define IXON    0002000
#define OPOST   0000001
#define CSIZE   0000060
#define CS8     0000060
#define PARENB  0000400
#define ISIG    0000001
#define ICANON  0000002
#define ECHO    0000010
#define ECHONL  0000100
#define IEXTEN  0100000
#define VTIME   5
#define VMIN    6

/* networking (include/linux/socket.h, in.h, sockios.h, if.h) */
#define AF_INET      2
#define SOCK_STREAM  1
#define SOCK_DGRAM   2
#define IPPROTO_TCP  6
#define TCP_MAXSEG   2
#define SIOCGIFFLAGS 0x8913
#define SIOCSIFFLAGS 0x8914
#define SIOCSIFADDR  0x8916
#define SIOCSIFNETMASK 0x891c
#define IFF_UP       0x1
#define IFF_RUNNING  0x40

struct sockaddr_in {
    u16 sin_family;
    u16 sin_port;      /* network byte order */
    u32 sin_addr;      /* network byte order */
    u8 sin_zero[8];
};

struct ifreq {
    char ifr_name[16];
    union {
        struct sockaddr_in addr;
        short flags;
    } u;
};

#endif
