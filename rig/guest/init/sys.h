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
/* more, for the workload (workload*.c) */
#define NR_link        9
#define NR_unlink     10
#define NR_execve     11
#define NR_chdir      12
#define NR_chmod      15
#define NR_lseek      19
#define NR_umount     22
#define NR_alarm      27
#define NR_pause      29
#define NR_access     33
#define NR_nice       34
#define NR_sync       36
#define NR_kill       37
#define NR_rename     38
#define NR_rmdir      40
#define NR_dup        41
#define NR_pipe       42
#define NR_times      43
#define NR_brk        45
#define NR_umount2    52
#define NR_setpgid    57
#define NR_umask      60
#define NR_getppid    64
#define NR_setsid     66
#define NR_sigaction  67
#define NR_sigsuspend 72
#define NR_sigpending 73
#define NR_gettimeofday 78
#define NR_symlink    83
#define NR_readlink   85
#define NR_old_mmap   90  /* takes a pointer to struct mmap_args */
#define NR_munmap     91
#define NR_truncate   92
#define NR_ftruncate  93
#define NR_fchmod     94
#define NR_getpriority 96
#define NR_setpriority 97
#define NR_statfs     99
#define NR_fstatfs   100
#define NR_setitimer 104
#define NR_getitimer 105
#define NR_stat      106
#define NR_lstat     107
#define NR_fstat     108
#define NR_sysinfo   116
#define NR_fsync     118
#define NR_clone     120
#define NR_mprotect  125
#define NR_sigprocmask 126
#define NR_getpgid   132
#define NR_fchdir    133
#define NR_llseek    140
#define NR_getdents  141
#define NR_newselect 142
#define NR_flock     143
#define NR_msync     144
#define NR_readv     145
#define NR_writev    146
#define NR_getsid    147
#define NR_fdatasync 148
#define NR_mlock     150
#define NR_munlock   151
#define NR_sched_setparam 154
#define NR_sched_getparam 155
#define NR_sched_setscheduler 156
#define NR_sched_getscheduler 157
#define NR_sched_yield 158
#define NR_sched_get_priority_max 159
#define NR_sched_get_priority_min 160
#define NR_sched_rr_get_interval 161
#define NR_mremap    163
#define NR_poll      168
#define NR_rt_sigaction 174
#define NR_rt_sigprocmask 175
#define NR_rt_sigpending 176
#define NR_rt_sigtimedwait 177
#define NR_rt_sigqueueinfo 178
#define NR_rt_sigsuspend 179
#define NR_pread     180
#define NR_pwrite    181
#define NR_getcwd    183
#define NR_sendfile  187
#define NR_vfork     190
#define NR_stat64    195
#define NR_fcntl64   221
#define NR_mincore   218
#define NR_madvise   219
#define NR_getdents64 220

/* socketcall sub-calls (include/linux/net.h) */
#define SYS_SOCKET       1
#define SYS_BIND         2
#define SYS_CONNECT      3
#define SYS_LISTEN       4
#define SYS_ACCEPT       5
#define SYS_GETSOCKNAME  6
#define SYS_GETPEERNAME  7
#define SYS_SOCKETPAIR   8
#define SYS_SEND         9
#define SYS_RECV        10
#define SYS_SENDTO      11
#define SYS_RECVFROM    12
#define SYS_SHUTDOWN    13
#define SYS_SETSOCKOPT  14
#define SYS_GETSOCKOPT  15
#define SYS_SENDMSG     16
#define SYS_RECVMSG     17

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

/* Every argument register is an in/out operand: 2.4's asmlinkage handlers take
 * their arguments from the saved registers on the kernel stack and may change
 * them as locals (sys_pwrite advances its `pos`), and those are the values
 * restored on return.  Later kernels guard against this (asmlinkage_protect);
 * 2.4 does not. */
static inline long sys0(long nr)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "0"(nr) : "memory");
    return ret;
}

static inline long sys1(long nr, long a)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret), "+b"(a) : "0"(nr) : "memory");
    return ret;
}

static inline long sys2(long nr, long a, long b)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret), "+b"(a), "+c"(b) : "0"(nr) : "memory");
    return ret;
}

static inline long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret), "+b"(a), "+c"(b), "+d"(c) : "0"(nr) : "memory");
    return ret;
}

static inline long sys4(long nr, long a, long b, long c, long d)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret), "+b"(a), "+c"(b), "+d"(c), "+S"(d) : "0"(nr) : "memory");
    return ret;
}

static inline long sys5(long nr, long a, long b, long c, long d, long e)
{
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret), "+b"(a), "+c"(b), "+d"(c), "+S"(d), "+D"(e) : "0"(nr)
                     : "memory");
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
