/* The `workload` command's parts and the helpers they share.
 *
 * Each part is a function that drives one area of the kernel and mixes every
 * deterministic fact it sees (checksums, byte counts, exit statuses, counts
 * fixed by handshakes, return codes) into its struct part.  Nothing that
 * depends on scheduling, time, pids or addresses may be mixed in: the digest
 * must be the same on every run and every boot.
 *
 * A part runs in a child of pid 1 (workload.c), in a process group of its own,
 * so neither a crash nor a signal nor memory it holds can touch pid 1.
 */
#ifndef TRAPSPLICE_WORKLOAD_H
#define TRAPSPLICE_WORKLOAD_H

#include "commands.h"

/* --- more system calls ---------------------------------------------------- */

static inline long sys_execve(const char *path, char *const argv[], char *const envp[])
{
    return sys3(NR_execve, (long)path, (long)argv, (long)envp);
}
static inline long sys_pipe(int fds[2]) { return sys1(NR_pipe, (long)fds); }
static inline long sys_kill(int pid, int sig) { return sys2(NR_kill, pid, sig); }
/* 2.4 returns jiffies (clock ticks since boot); read as u32, it wraps but is never an error */
static inline u32 sys_times(void *buf) { return (u32)sys1(NR_times, (long)buf); }
static inline long sys_getppid(void) { return sys0(NR_getppid); }
static inline long sys_setpgid(int pid, int pgid) { return sys2(NR_setpgid, pid, pgid); }
static inline long sys_dup(int fd) { return sys1(NR_dup, fd); }
static inline long sys_lseek(int fd, long offset, int whence) { return sys3(NR_lseek, fd, offset, whence); }
static inline long sys_unlink(const char *path) { return sys1(NR_unlink, (long)path); }
static inline long sys_rmdir(const char *path) { return sys1(NR_rmdir, (long)path); }
static inline long sys_link(const char *from, const char *to) { return sys2(NR_link, (long)from, (long)to); }
static inline long sys_rename(const char *from, const char *to) { return sys2(NR_rename, (long)from, (long)to); }
static inline long sys_symlink(const char *to, const char *path) { return sys2(NR_symlink, (long)to, (long)path); }
static inline long sys_readlink(const char *path, char *buf, u32 len) { return sys3(NR_readlink, (long)path, (long)buf, len); }
static inline long sys_chdir(const char *path) { return sys1(NR_chdir, (long)path); }
static inline long sys_chmod(const char *path, int mode) { return sys2(NR_chmod, (long)path, mode); }
static inline long sys_access(const char *path, int mode) { return sys2(NR_access, (long)path, mode); }
static inline long sys_umount(const char *path) { return sys1(NR_umount, (long)path); }
static inline long sys_truncate(const char *path, long length) { return sys2(NR_truncate, (long)path, length); }
static inline long sys_ftruncate(int fd, long length) { return sys2(NR_ftruncate, fd, length); }
static inline long sys_fsync(int fd) { return sys1(NR_fsync, fd); }
static inline long sys_fdatasync(int fd) { return sys1(NR_fdatasync, fd); }
static inline long sys_getdents(int fd, void *buf, u32 len) { return sys3(NR_getdents, fd, (long)buf, len); }
static inline long sys_getdents64(int fd, void *buf, u32 len) { return sys3(NR_getdents64, fd, (long)buf, len); }
static inline long sys_stat(const char *path, void *st) { return sys2(NR_stat, (long)path, (long)st); }
static inline long sys_lstat(const char *path, void *st) { return sys2(NR_lstat, (long)path, (long)st); }
static inline long sys_fstat(int fd, void *st) { return sys2(NR_fstat, fd, (long)st); }
static inline long sys_stat64(const char *path, void *st) { return sys2(NR_stat64, (long)path, (long)st); }
static inline long sys_statfs(const char *path, void *buf) { return sys2(NR_statfs, (long)path, (long)buf); }
static inline long sys_pread(int fd, void *buf, u32 len, long offset)
{
    return sys5(NR_pread, fd, (long)buf, len, offset, 0); /* 64-bit offset: low, high */
}
static inline long sys_pwrite(int fd, const void *buf, u32 len, long offset)
{
    return sys5(NR_pwrite, fd, (long)buf, len, offset, 0);
}
static inline long sys_readv(int fd, const void *iov, int count) { return sys3(NR_readv, fd, (long)iov, count); }
static inline long sys_writev(int fd, const void *iov, int count) { return sys3(NR_writev, fd, (long)iov, count); }
static inline long sys_llseek(int fd, u32 high, u32 low, void *result, int whence)
{
    return sys5(NR_llseek, fd, high, low, (long)result, whence);
}
static inline long sys_sendfile(int out, int in, long *offset, u32 count)
{
    return sys4(NR_sendfile, out, in, (long)offset, count);
}
static inline long sys_flock(int fd, int op) { return sys2(NR_flock, fd, op); }
static inline long sys_brk(u32 end) { return sys1(NR_brk, end); }
static inline long sys_munmap(void *addr, u32 len) { return sys2(NR_munmap, (long)addr, len); }
static inline long sys_mprotect(void *addr, u32 len, int prot) { return sys3(NR_mprotect, (long)addr, len, prot); }
static inline long sys_msync(void *addr, u32 len, int flags) { return sys3(NR_msync, (long)addr, len, flags); }
static inline long sys_mremap(void *addr, u32 old_len, u32 new_len, int flags)
{
    return sys4(NR_mremap, (long)addr, old_len, new_len, flags);
}
static inline long sys_mincore(void *addr, u32 len, u8 *vec) { return sys3(NR_mincore, (long)addr, len, (long)vec); }
static inline long sys_madvise(void *addr, u32 len, int advice) { return sys3(NR_madvise, (long)addr, len, advice); }
static inline long sys_mlock(void *addr, u32 len) { return sys2(NR_mlock, (long)addr, len); }
static inline long sys_munlock(void *addr, u32 len) { return sys2(NR_munlock, (long)addr, len); }
static inline long sys_sysinfo(void *info) { return sys1(NR_sysinfo, (long)info); }
static inline long sys_poll(void *fds, u32 count, int timeout_ms) { return sys3(NR_poll, (long)fds, count, timeout_ms); }
static inline long sys_select(int n, void *rd, void *wr, void *ex, void *timeout)
{
    return sys5(NR_newselect, n, (long)rd, (long)wr, (long)ex, (long)timeout);
}
static inline long sys_gettimeofday(void *tv) { return sys2(NR_gettimeofday, (long)tv, 0); }
static inline long sys_nanosleep2(const struct timespec32 *req, struct timespec32 *rem)
{
    return sys2(NR_nanosleep, (long)req, (long)rem);
}
static inline long sys_sched_yield(void) { return sys0(NR_sched_yield); }

/* struct mmap_arg_struct of the old mmap(2) (arch/i386/kernel/sys_i386.c) */
struct mmap_args {
    u32 addr, len, prot, flags, fd, offset;
};
static inline void *sys_mmap(void *addr, u32 len, int prot, int flags, int fd, u32 offset)
{
    struct mmap_args args;
    args.addr = (u32)addr;
    args.len = len;
    args.prot = (u32)prot;
    args.flags = (u32)flags;
    args.fd = (u32)fd;
    args.offset = offset;
    return (void *)sys1(NR_old_mmap, (long)&args);
}
/* mmap returns -errno in the top 4 KiB of the address space */
static inline int mmap_failed(void *p) { return (u32)p >= 0xfffff000u; }

#define PROT_READ   1
#define PROT_WRITE  2
#define MAP_SHARED  1
#define MAP_PRIVATE 2
#define MAP_ANONYMOUS 0x20
#define MREMAP_MAYMOVE 1
#define MS_SYNC     4
#define MADV_WILLNEED 3
#define MADV_DONTNEED 4

#define O_RDONLY    0
#define O_WRONLY    1
#define O_CREAT     0100
#define O_EXCL      0200
#define O_TRUNC     01000
#define O_APPEND    02000
#define O_DIRECTORY 0200000
#define SEEK_SET 0
#define SEEK_CUR 1
#define SEEK_END 2
#define S_IFIFO  0010000
#define S_IFREG  0100000
#define S_IFLNK  0120000
#define S_IFMT   0170000
#define F_DUPFD  0
#define F_SETFD  2
#define F_GETLK  5
#define F_SETLK  6
#define F_WRLCK  1
#define F_UNLCK  2
#define LOCK_EX  2
#define LOCK_UN  8
#define FD_CLOEXEC 1

#define ENOENT   2
#define ESRCH    3
#define ECHILD  10
#define ENOMEM  12
#define EFAULT  14
#define EBUSY   16
#define ENOTDIR 20
#define EISDIR  21
#define EINVAL  22
#define EPIPE   32
#define ENOTEMPTY 39
#define ETIMEDOUT 110
#define ENOTCONN 107

#define WNOHANG 1
#define WUNTRACED 2

/* struct stat of newstat(2) on i386 2.4 (include/asm-i386/stat.h) */
struct kstat {
    u16 st_dev, pad1;
    u32 st_ino;
    u16 st_mode, st_nlink, st_uid, st_gid, st_rdev, pad2;
    u32 st_size, st_blksize, st_blocks;
    u32 st_atime, atime_nsec, st_mtime, mtime_nsec, st_ctime, ctime_nsec;
    u32 unused4, unused5;
};

/* struct stat64 (include/asm-i386/stat.h): only the fields used are named */
struct kstat64 {
    u8 head[16];
    u32 st_mode, st_nlink, st_uid, st_gid;
    u8 rdev_pad[12];
    u32 st_size_lo, st_size_hi;
    u8 tail[48];
};

struct iovec32 {
    void *base;
    u32 len;
};

struct pollfd32 {
    int fd;
    short events, revents;
};
#define POLLIN  0x001
#define POLLPRI 0x002
#define POLLOUT 0x004
#define POLLERR 0x008
#define POLLHUP 0x010

struct timeval32 {
    long tv_sec;
    long tv_usec;
};

/* --- signals (include/asm-i386/signal.h) ---------------------------------- */

#define SIGHUP   1
#define SIGINT   2
#define SIGKILL  9
#define SIGUSR1 10
#define SIGSEGV 11
#define SIGUSR2 12
#define SIGPIPE 13
#define SIGALRM 14
#define SIGTERM 15
#define SIGCHLD 17
#define SIGCONT 18
#define SIGSTOP 19
#define SIGCONT 18
#define SIGSTOP 19
#define SIGVTALRM 26
#define SIGPROF 27
#define SIGFPE   8
#define SIGRTMIN 32
#define SIG_DFL  0
#define SIG_IGN  1
#define SIG_BLOCK   0
#define SIG_UNBLOCK 1
#define SIG_SETMASK 2
#define SA_NOCLDSTOP 0x00000001u
#define SA_SIGINFO   0x00000004u
#define SA_RESTORER  0x04000000u
#define SA_RESTART   0x10000000u
#define SA_NODEFER   0x40000000u
#define SA_RESETHAND 0x80000000u
#define ITIMER_REAL    0
#define ITIMER_VIRTUAL 1
#define ITIMER_PROF    2

typedef struct {
    u32 bits[2];
} ksigset;

/* what rt_sigaction(2) takes on i386 */
struct ksigaction {
    void *handler;
    u32 flags;
    void (*restorer)(void);
    ksigset mask;
};

struct itimerval32 {
    struct timeval32 interval, value;
};

struct ksiginfo {
    int si_signo, si_errno, si_code;
    int pid, uid, value;
    int pad[26];
};

/* restorers for handlers without and with SA_SIGINFO (signal.c) */
void wl_sigreturn(void);
void wl_rt_sigreturn(void);

static inline void sigset_clear(ksigset *set) { set->bits[0] = set->bits[1] = 0; }
static inline void sigset_add(ksigset *set, int sig) { set->bits[(sig - 1) / 32] |= 1u << ((sig - 1) % 32); }
static inline long sys_rt_sigaction(int sig, const struct ksigaction *act, struct ksigaction *old)
{
    return sys4(NR_rt_sigaction, sig, (long)act, (long)old, 8);
}
static inline long sys_rt_sigprocmask(int how, const ksigset *set, ksigset *old)
{
    return sys4(NR_rt_sigprocmask, how, (long)set, (long)old, 8);
}
static inline long sys_rt_sigsuspend(const ksigset *mask) { return sys2(NR_rt_sigsuspend, (long)mask, 8); }
static inline long sys_rt_sigpending(ksigset *set) { return sys2(NR_rt_sigpending, (long)set, 8); }
static inline long sys_rt_sigtimedwait(const ksigset *set, struct ksiginfo *info, const struct timespec32 *timeout)
{
    return sys4(NR_rt_sigtimedwait, (long)set, (long)info, (long)timeout, 8);
}
static inline long sys_rt_sigqueueinfo(int pid, int sig, struct ksiginfo *info)
{
    return sys3(NR_rt_sigqueueinfo, pid, sig, (long)info);
}
static inline long sys_setitimer(int which, const struct itimerval32 *value, struct itimerval32 *old)
{
    return sys3(NR_setitimer, which, (long)value, (long)old);
}

/* install handler for sig (rt_sigaction, the right restorer for the flags) */
long wl_handle(int sig, void *handler, u32 flags);
/* block (how = SIG_BLOCK) or unblock one signal */
long wl_sigmask(int how, int sig);

/* --- sockets -------------------------------------------------------------- */

#define AF_UNIX    1
#define AF_PACKET 17
#define SOCK_RAW   3
#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define SO_TYPE      3
#define SO_SNDBUF    7
#define SO_RCVBUF    8
#define SO_KEEPALIVE 9
#define SO_LINGER   13
#define SO_RCVLOWAT 18
#define TCP_NODELAY  1
#define MSG_OOB      1
#define MSG_PEEK     2
#define MSG_DONTWAIT 0x40
#define MSG_WAITALL  0x100
#define MSG_NOSIGNAL 0x4000
#define SHUT_RD   0
#define SHUT_WR   1
#define SHUT_RDWR 2
#define SCM_RIGHTS 1

struct msghdr32 {
    void *name;
    u32 namelen;
    struct iovec32 *iov;
    u32 iovlen;
    void *control;
    u32 controllen;
    u32 flags;
};

long wl_sock(int call, long a, long b, long c, long d, long e);
long wl_sock6(int call, long a, long b, long c, long d, long e, long f);
long wl_socket(int family, int type, int protocol);
long wl_setsockopt_int(int fd, int level, int name, int value);
long wl_getsockopt_int(int fd, int level, int name, int *value);
u16 wl_htons(u16 v);

#define LOOPBACK_ADDR 0x0100007fu /* 127.0.0.1 in network byte order */

/* --- the part context and digest -------------------------------------------- */

struct part {
    u64 hash;           /* FNV-1a 64 over everything deterministic the part saw */
    const char *failed; /* first failed step, 0 if none */
    long error;         /* its result (-errno or a detail) */
};

void wl_mix(struct part *p, u32 value);
void wl_mix_bytes(struct part *p, const void *data, u32 len);
void wl_mix_str(struct part *p, const char *s);
/* record the first failure (mixed into the hash too); returns -1 */
int wl_fail(struct part *p, const char *step, long error);

/* a negative result fails the part at `step` and returns -1 from the caller */
#define TRY(p, step, expr)                              \
    ({                                                  \
        long try_result_ = (long)(expr);                \
        if (try_result_ < 0)                            \
            return wl_fail((p), (step), try_result_);   \
        try_result_;                                    \
    })
/* a false condition fails the part with `detail` as its error */
#define CHECK(p, step, cond, detail)                    \
    do {                                                \
        if (!(cond))                                    \
            return wl_fail((p), (step), (long)(detail)); \
    } while (0)

/* --- helpers (workload.c) ------------------------------------------------- */

/* streaming check of data made by wl_fill: FNV-1a 32 of the bytes, their count,
 * and how many differ from the pattern; independent of how reads split it */
struct stream_check {
    u32 seed;
    u32 hash;
    u32 bytes;
    u32 mismatches;
};
u8 wl_pattern(u32 seed, u32 offset);
void wl_fill(u8 *buf, u32 len, u32 seed, u32 offset);
void stream_init(struct stream_check *s, u32 seed);
void stream_update(struct stream_check *s, const u8 *data, u32 len);
void stream_mix(struct part *p, const struct stream_check *s);
u32 wl_fnv32(const void *data, u32 len);

/* full reads/writes: bytes moved (short only at EOF) or -errno */
long wl_read_full(int fd, void *buf, u32 len);
long wl_write_full(int fd, const void *buf, u32 len);
/* all of buf through `step` (a write-like call), again after -EINTR and short counts: len, or -errno
 * (-EPIPE for a step that wrote nothing) */
typedef long (*wl_write_step)(int fd, const u8 *buf, u32 len);
long wl_put_full(wl_write_step step, int fd, const u8 *buf, u32 len);
/* 1 if fd is readable within ms, 0 on timeout, -errno */
long wl_wait_readable(int fd, int ms);
/* wait4 for pid, retrying on EINTR; the status in *status */
long wl_wait(int pid, int *status);
/* fork; the child runs fn(arg) and exits with its result */
long wl_spawn(int (*fn)(void *), void *arg);
/* fork and exec /init with args (0-terminated); stdin/stdout from in/out if >= 0 */
long wl_spawn_init(char *const *args, int in, int out);
/* exit status (0-255) or 256 + signal */
int wl_status_code(int status);
void wl_sleep_ms(u32 ms);
u32 wl_now_ms(void);
/* the root (ext2 on the initrd) is mounted read-only: remount it rw (1) or ro (0) */
long wl_root_writable(int writable);
/* bytes read from a whole file into buf (at most len) or -errno */
long wl_read_file(const char *path, char *buf, u32 len);

/* scratch space for parts (each part runs in its own process) */
#define WL_BUFFER_BYTES (256u * 1024u)
extern u8 wl_buffer[WL_BUFFER_BYTES];
extern u8 wl_buffer2[WL_BUFFER_BYTES];

/* --- the parts ------------------------------------------------------------ */

int part_fork(struct part *p);
int part_pipe(struct part *p);
int part_signal(struct part *p);
int part_file(struct part *p);
int part_memory(struct part *p);
int part_sched(struct part *p);
int part_tcp(struct part *p);
int part_udp(struct part *p);
int part_unix(struct part *p);
int part_nic(struct part *p);

/* exec'd /init with pid != 1 (child.c) */
__attribute__((noreturn)) void child_main(int argc, char **argv, char **envp);

#endif
