/* workload part `file`: the same file-system walk on the ext2 root (the initrd)
 * and on a ramfs mounted at /mnt, then /proc.  Everything it makes it removes,
 * so the next run starts from the same state (and cleans up after a run that
 * died half-way first). */
#include "workload.h"

#define RAMFS_MOUNT "/mnt"
#define FILE_SEED 0xf11e0000u

static const u32 file_sizes[] = {0, 1, 4095, 4096, 4097, 70000};

struct fs_paths {
    char dir[48], sub[64], file[64], other[64], moved[64], hard[64], sym[64], fifo[64], copy[64], many[64];
};

static void join(char *out, const char *dir, const char *name)
{
    u32 n = str_len(dir), m = str_len(name);
    memcpy(out, dir, n);
    out[n] = '/';
    memcpy(out + n + 1, name, m + 1);
}

static void make_paths(struct fs_paths *fp, const char *root)
{
    join(fp->dir, root, "wl");
    join(fp->sub, fp->dir, "sub");
    join(fp->file, fp->dir, "file");
    join(fp->other, fp->dir, "other");
    join(fp->moved, fp->sub, "moved");
    join(fp->hard, fp->dir, "hard");
    join(fp->sym, fp->dir, "sym");
    join(fp->fifo, fp->dir, "fifo");
    join(fp->copy, fp->dir, "copy");
    join(fp->many, fp->dir, "many");
}

static void numbered(char *out, const char *dir, u32 i)
{
    char name[8];
    name[0] = 'f';
    name[1] = (char)('0' + i / 100 % 10);
    name[2] = (char)('0' + i / 10 % 10);
    name[3] = (char)('0' + i % 10);
    name[4] = '\0';
    join(out, dir, name);
}

#define MANY_FILES 120

/* best effort: whatever a run that died left behind */
static void clean(const struct fs_paths *fp)
{
    char path[80];
    u32 i;
    for (i = 0; i < sizeof(file_sizes) / sizeof(file_sizes[0]) + 1; i++) {
        numbered(path, fp->dir, i);
        sys_unlink(path);
    }
    for (i = 0; i < MANY_FILES; i++) {
        numbered(path, fp->many, i);
        sys_unlink(path);
    }
    sys_rmdir(fp->many);
    sys_unlink(fp->file);
    sys_unlink(fp->other);
    sys_unlink(fp->moved);
    sys_unlink(fp->hard);
    sys_unlink(fp->sym);
    sys_unlink(fp->fifo);
    sys_unlink(fp->copy);
    sys_rmdir(fp->sub);
    sys_rmdir(fp->dir);
}

static void mix_stat(struct part *p, const struct kstat *st)
{
    wl_mix(p, st->st_mode);
    wl_mix(p, st->st_nlink);
    wl_mix(p, st->st_size);
}

/* write size bytes of the pattern in uneven pieces (write, writev, pwrite) */
static int write_pattern(struct part *p, int fd, u32 size, u32 seed)
{
    u32 done = 0, step = 0;
    while (done < size) {
        u32 n = 1 + (step * 2654435761u >> 20) % 9000;
        if (n > size - done)
            n = size - done;
        wl_fill(wl_buffer, n, seed, done);
        if (step % 3 == 1 && n > 1) {
            struct iovec32 iov[2];
            iov[0].base = wl_buffer;
            iov[0].len = n / 2;
            iov[1].base = wl_buffer + n / 2;
            iov[1].len = n - n / 2;
            CHECK(p, "writev", sys_writev(fd, iov, 2) == (long)n, done);
        } else if (step % 3 == 2) {
            CHECK(p, "pwrite", sys_pwrite(fd, wl_buffer, n, (long)done) == (long)n, done);
            TRY(p, "lseek-cur", sys_lseek(fd, (long)n, SEEK_CUR));
        } else {
            CHECK(p, "write", wl_write_full(fd, wl_buffer, n) == (long)n, done);
        }
        done += n;
        step++;
    }
    return 0;
}

static int read_back(struct part *p, int fd, u32 size, u32 seed)
{
    struct stream_check check;
    long n;
    TRY(p, "lseek-set", sys_lseek(fd, 0, SEEK_SET));
    stream_init(&check, seed);
    for (;;) {
        n = TRY(p, "read", sys_read(fd, wl_buffer2, 3000));
        if (n == 0)
            break;
        stream_update(&check, wl_buffer2, (u32)n);
    }
    stream_mix(p, &check);
    CHECK(p, "read-size", check.bytes == size, check.bytes);
    if (size > 10) { /* pread and readv in the middle */
        struct iovec32 iov[2];
        u8 a[3], b[4];
        n = TRY(p, "pread", sys_pread(fd, wl_buffer2, 7, (long)(size / 2)));
        wl_mix_bytes(p, wl_buffer2, (u32)n);
        TRY(p, "lseek-mid", sys_lseek(fd, (long)(size / 3), SEEK_SET));
        iov[0].base = a;
        iov[0].len = sizeof(a);
        iov[1].base = b;
        iov[1].len = sizeof(b);
        wl_mix(p, (u32)TRY(p, "readv", sys_readv(fd, iov, 2)));
        wl_mix_bytes(p, a, sizeof(a));
        wl_mix_bytes(p, b, sizeof(b));
    }
    return 0;
}

static int files_of_sizes(struct part *p, const struct fs_paths *fp, u32 big)
{
    char path[80];
    struct kstat st;
    u32 i, count = sizeof(file_sizes) / sizeof(file_sizes[0]);
    long fd;
    for (i = 0; i <= count; i++) {
        u32 size = i < count ? file_sizes[i] : big;
        numbered(path, fp->dir, i);
        fd = TRY(p, "create", sys_open(path, O_RDWR | O_CREAT | O_EXCL, 0644));
        if (write_pattern(p, (int)fd, size, FILE_SEED + i) || read_back(p, (int)fd, size, FILE_SEED + i))
            return -1;
        wl_mix(p, (u32)TRY(p, "lseek-end", sys_lseek((int)fd, 0, SEEK_END)));
        TRY(p, "fstat", sys_fstat((int)fd, &st));
        mix_stat(p, &st);
        TRY(p, "fsync", sys_fsync((int)fd));
        sys_close((int)fd);
    }
    /* sendfile: the biggest into a copy; then compare */
    {
        long in = TRY(p, "sf-open", sys_open(path, O_RDONLY, 0));
        long out = TRY(p, "sf-create", sys_open(fp->copy, O_RDWR | O_CREAT | O_TRUNC, 0600));
        long offset = 0, moved = 0, n;
        while (moved < (long)big) {
            n = TRY(p, "sendfile", sys_sendfile((int)out, (int)in, &offset, big - (u32)moved));
            if (n == 0)
                break;
            moved += n;
        }
        wl_mix(p, (u32)moved);
        if (read_back(p, (int)out, big, FILE_SEED + count))
            return -1;
        sys_close((int)in);
        sys_close((int)out);
    }
    /* sizes by stat, then truncate: shrink, grow (a hole of zeros) */
    for (i = 0; i <= count; i++) {
        numbered(path, fp->dir, i);
        TRY(p, "stat", sys_stat(path, &st));
        mix_stat(p, &st);
    }
    numbered(path, fp->dir, count);
    TRY(p, "truncate", sys_truncate(path, 5000));
    fd = TRY(p, "trunc-open", sys_open(path, O_RDWR, 0));
    if (read_back(p, (int)fd, 5000, FILE_SEED + count))
        return -1;
    TRY(p, "ftruncate", sys_ftruncate((int)fd, 9000));
    CHECK(p, "hole-read", sys_pread((int)fd, wl_buffer2, 4000, 5000) == 4000, 0);
    for (i = 0; i < 4000 && wl_buffer2[i] == 0; i++)
        ;
    wl_mix(p, i); /* 4000: all zeros */
    TRY(p, "fdatasync", sys_fdatasync((int)fd));
    {
        u32 position[2];
        TRY(p, "llseek", sys_llseek((int)fd, 0, 100, position, SEEK_SET));
        wl_mix(p, position[0]);
    }
    sys_close((int)fd);
    for (i = 0; i <= count; i++) {
        numbered(path, fp->dir, i);
        TRY(p, "unlink", sys_unlink(path));
    }
    TRY(p, "unlink-copy", sys_unlink(fp->copy));
    return 0;
}

static int names_and_links(struct part *p, const struct fs_paths *fp)
{
    struct kstat st;
    struct kstat64 st64;
    char target[64];
    long fd, n;

    fd = TRY(p, "n-create", sys_open(fp->file, O_WRONLY | O_CREAT | O_TRUNC, 0600));
    TRY(p, "n-write", wl_write_full((int)fd, "hello, ", 7));
    sys_close((int)fd);
    fd = TRY(p, "n-append", sys_open(fp->file, O_WRONLY | O_APPEND, 0));
    TRY(p, "n-lseek0", sys_lseek((int)fd, 0, SEEK_SET));
    TRY(p, "n-write2", wl_write_full((int)fd, "world", 5)); /* O_APPEND: at the end anyway */
    sys_close((int)fd);
    TRY(p, "link", sys_link(fp->file, fp->hard));
    TRY(p, "n-stat", sys_stat(fp->file, &st));
    mix_stat(p, &st); /* nlink 2 */
    TRY(p, "rename", sys_rename(fp->file, fp->moved));
    wl_mix(p, (u32)sys_stat(fp->file, &st)); /* -ENOENT */
    TRY(p, "symlink", sys_symlink("sub/moved", fp->sym));
    n = TRY(p, "readlink", sys_readlink(fp->sym, target, sizeof(target)));
    wl_mix_bytes(p, target, (u32)n);
    TRY(p, "lstat", sys_lstat(fp->sym, &st));
    wl_mix(p, st.st_mode & S_IFMT);
    TRY(p, "stat-through", sys_stat(fp->sym, &st));
    mix_stat(p, &st);
    TRY(p, "stat64", sys_stat64(fp->sym, &st64));
    wl_mix(p, st64.st_size_lo);
    n = TRY(p, "read-through", wl_read_file(fp->sym, target, sizeof(target)));
    wl_mix_bytes(p, target, (u32)n); /* "hello, world" */
    TRY(p, "chmod", sys_chmod(fp->moved, 0400));
    TRY(p, "n-stat2", sys_stat(fp->hard, &st));
    mix_stat(p, &st);
    wl_mix(p, (u32)sys_access(fp->moved, 4));
    TRY(p, "unlink-moved", sys_unlink(fp->moved));
    TRY(p, "n-stat3", sys_stat(fp->hard, &st));
    mix_stat(p, &st); /* nlink 1 */
    wl_mix(p, (u32)sys_rmdir(fp->dir)); /* -ENOTEMPTY */
    wl_mix(p, (u32)sys_stat(fp->sym, &st)); /* dangling: -ENOENT */
    TRY(p, "unlink-sym", sys_unlink(fp->sym));
    TRY(p, "unlink-hard", sys_unlink(fp->hard));
    return 0;
}

/* fcntl and flock locks, dup, close-on-exec */
static int descriptors(struct part *p, const struct fs_paths *fp)
{
    struct {
        short type, whence;
        long start, len;
        int pid;
    } lock;
    long fd, copy;
    fd = TRY(p, "d-create", sys_open(fp->other, O_RDWR | O_CREAT | O_TRUNC, 0600));
    TRY(p, "d-write", wl_write_full((int)fd, "0123456789", 10));
    copy = TRY(p, "dup", sys_dup((int)fd));
    TRY(p, "dup-lseek", sys_lseek((int)copy, 4, SEEK_SET)); /* shared offset */
    wl_mix(p, (u32)sys_lseek((int)fd, 0, SEEK_CUR));
    sys_close((int)copy);
    copy = TRY(p, "dupfd", sys_fcntl((int)fd, F_DUPFD, 20));
    wl_mix(p, (u32)copy); /* the lowest free fd from 20 */
    TRY(p, "cloexec", sys_fcntl((int)copy, F_SETFD, FD_CLOEXEC));
    wl_mix(p, (u32)sys_fcntl((int)copy, F_GETFD, 0));
    sys_close((int)copy);
    memset(&lock, 0, sizeof(lock));
    lock.type = F_WRLCK;
    lock.whence = SEEK_SET;
    lock.len = 5;
    TRY(p, "setlk", sys_fcntl((int)fd, F_SETLK, (long)&lock));
    lock.type = F_UNLCK;
    TRY(p, "unlk", sys_fcntl((int)fd, F_SETLK, (long)&lock));
    TRY(p, "flock", sys_flock((int)fd, LOCK_EX));
    TRY(p, "funlock", sys_flock((int)fd, LOCK_UN));
    sys_close((int)fd);
    TRY(p, "unlink-other", sys_unlink(fp->other));
    return 0;
}

struct lock_handoff {
    int fd;
    int ready[2];
};

#define F_SETLKW 7

struct flock32 {
    short type, whence;
    long start, len;
    int pid;
};

/* waits (F_SETLKW) for the lock the parent holds, then reports */
static int lock_waiter(void *arg)
{
    struct lock_handoff *h = arg;
    struct flock32 lock;
    memset(&lock, 0, sizeof(lock));
    lock.type = F_WRLCK;
    lock.len = 10;
    if (wl_write_full(h->ready[1], "r", 1) != 1)
        return 1;
    if (sys_fcntl(h->fd, F_SETLKW, (long)&lock) < 0)
        return 2;
    lock.type = F_UNLCK;
    sys_fcntl(h->fd, F_SETLK, (long)&lock);
    return 30;
}

/* a waiter blocked on a POSIX lock is woken when the holder unlocks (2.4 yields to it) */
static int blocked_lock(struct part *p, const struct fs_paths *fp)
{
    static struct lock_handoff h;
    struct flock32 lock;
    int status = 0;
    u8 byte;
    long pid;
    h.fd = (int)TRY(p, "bl-create", sys_open(fp->other, O_RDWR | O_CREAT | O_TRUNC, 0600));
    TRY(p, "bl-pipe", sys_pipe(h.ready));
    memset(&lock, 0, sizeof(lock));
    lock.type = F_WRLCK;
    lock.len = 10;
    TRY(p, "bl-lock", sys_fcntl(h.fd, F_SETLK, (long)&lock));
    pid = TRY(p, "bl-fork", wl_spawn(lock_waiter, &h));
    CHECK(p, "bl-ready", wl_read_full(h.ready[0], &byte, 1) == 1, 0);
    wl_sleep_ms(5); /* let it block; it gets the lock either way */
    lock.type = F_UNLCK;
    TRY(p, "bl-unlock", sys_fcntl(h.fd, F_SETLK, (long)&lock));
    TRY(p, "bl-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    sys_close(h.fd);
    sys_close(h.ready[0]);
    sys_close(h.ready[1]);
    TRY(p, "bl-unlink", sys_unlink(fp->other));
    return 0;
}

#define LOCK_SH 1

struct flock_handoff {
    const char *path;
    int ready[2];
};

/* opens the file itself (flock locks belong to an open file) and waits for LOCK_EX */
static int flock_waiter(void *arg)
{
    struct flock_handoff *h = arg;
    long fd = sys_open(h->path, O_RDWR, 0);
    if (fd < 0)
        return 1;
    if (wl_write_full(h->ready[1], "r", 1) != 1)
        return 2;
    if (sys_flock((int)fd, LOCK_EX) < 0)
        return 3;
    sys_flock((int)fd, LOCK_UN);
    return 40;
}

/* 1 once /proc/locks lists a blocked waiter (its lines begin with " ->" after the number) */
static int lock_waiter_listed(void)
{
    static char text[1024];
    long n = wl_read_file("/proc/locks", text, sizeof(text) - 1), i;
    for (i = 0; i + 1 < n; i++)
        if (text[i] == '-' && text[i + 1] == '>')
            return 1;
    return 0;
}

/* a holder converts its shared flock to exclusive while a waiter is blocked on it:
 * 2.4 drops the old lock, wakes the waiter and yields to it until it is off the
 * block list (locks_wake_up_blocks with wait); the waiter takes the lock first */
static int flock_convert(struct part *p, const struct fs_paths *fp)
{
    static struct flock_handoff h;
    int status = 0, tries;
    u8 byte;
    long fd, pid;
    fd = TRY(p, "fc-create", sys_open(fp->other, O_RDWR | O_CREAT | O_TRUNC, 0600));
    h.path = fp->other;
    TRY(p, "fc-pipe", sys_pipe(h.ready));
    TRY(p, "fc-shared", sys_flock((int)fd, LOCK_SH));
    pid = TRY(p, "fc-fork", wl_spawn(flock_waiter, &h));
    CHECK(p, "fc-ready", wl_read_full(h.ready[0], &byte, 1) == 1, 0);
    for (tries = 0; tries < 200 && !lock_waiter_listed(); tries++) /* the result does not depend on it */
        wl_sleep_ms(1);
    wl_mix(p, (u32)sys_flock((int)fd, LOCK_EX));
    wl_mix(p, (u32)sys_flock((int)fd, LOCK_UN));
    TRY(p, "fc-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    sys_close((int)fd);
    sys_close(h.ready[0]);
    sys_close(h.ready[1]);
    TRY(p, "fc-unlink", sys_unlink(fp->other));
    return 0;
}

/* many small files: dentries and inodes made and dropped (slab) */
static int many_files(struct part *p, const struct fs_paths *fp)
{
    char path[80];
    struct kstat st;
    u32 i, names = 0, count = 0, misses = 0;
    long fd, n, off;
    TRY(p, "many-mkdir", sys_mkdir(fp->many, 0755));
    for (i = 0; i < MANY_FILES; i++) {
        numbered(path, fp->many, i);
        fd = TRY(p, "many-create", sys_open(path, O_WRONLY | O_CREAT | O_EXCL, 0644));
        TRY(p, "many-write", wl_write_full((int)fd, path, i % 50));
        sys_close((int)fd);
    }
    /* getdents: the set of names (order-free) */
    fd = TRY(p, "many-open", sys_open(fp->many, O_RDONLY | O_DIRECTORY, 0));
    for (;;) {
        n = TRY(p, "getdents", sys_getdents((int)fd, wl_buffer, 4096));
        if (n == 0)
            break;
        for (off = 0; off < n;) {
            /* struct linux_dirent: ino, off, reclen (u16), name */
            u16 reclen = *(u16 *)(wl_buffer + off + 8);
            const char *name = (const char *)wl_buffer + off + 10;
            names += wl_fnv32(name, str_len(name));
            count++;
            off += reclen;
        }
    }
    sys_close((int)fd);
    wl_mix(p, names);
    wl_mix(p, count);
    fd = TRY(p, "many-open64", sys_open(fp->many, O_RDONLY | O_DIRECTORY, 0));
    n = TRY(p, "getdents64", sys_getdents64((int)fd, wl_buffer, 65536));
    wl_mix(p, n > 0);
    sys_close((int)fd);
    for (i = 0; i < MANY_FILES; i++) {
        numbered(path, fp->many, i);
        TRY(p, "many-stat", sys_stat(path, &st));
        count += st.st_size;
        path[str_len(path) - 1] = 'x'; /* a name that is not there: negative dentries */
        if (sys_stat(path, &st) == -ENOENT)
            misses++;
    }
    wl_mix(p, count);
    wl_mix(p, misses);
    for (i = 0; i < MANY_FILES; i++) {
        numbered(path, fp->many, i);
        TRY(p, "many-unlink", sys_unlink(path));
    }
    TRY(p, "many-rmdir", sys_rmdir(fp->many));
    return 0;
}

static int fifo_writer(void *arg)
{
    long fd = sys_open((const char *)arg, O_WRONLY, 0);
    u32 i;
    if (fd < 0)
        return 1;
    for (i = 0; i < 16; i++) {
        wl_fill(wl_buffer, 1024, 99, i * 1024);
        if (wl_write_full((int)fd, wl_buffer, 1024) != 1024)
            return 2;
    }
    return 0;
}

static int fifo(struct part *p, const struct fs_paths *fp)
{
    struct stream_check check;
    int status = 0;
    long pid, fd, n;
    TRY(p, "mkfifo", sys_mknod(fp->fifo, S_IFIFO | 0600, 0));
    pid = TRY(p, "fifo-fork", wl_spawn(fifo_writer, (void *)fp->fifo));
    fd = TRY(p, "fifo-open", sys_open(fp->fifo, O_RDONLY, 0));
    stream_init(&check, 99);
    while ((n = TRY(p, "fifo-read", sys_read((int)fd, wl_buffer2, 1500))) > 0)
        stream_update(&check, wl_buffer2, (u32)n);
    sys_close((int)fd);
    TRY(p, "fifo-wait", wl_wait((int)pid, &status));
    stream_mix(p, &check);
    wl_mix(p, (u32)wl_status_code(status));
    TRY(p, "unlink-fifo", sys_unlink(fp->fifo));
    return 0;
}

static int walk(struct part *p, const char *root, u32 big)
{
    static struct fs_paths fp;
    static char cwd[80];
    struct {
        long type, bsize, blocks, bfree, bavail, files, ffree, fsid[2], namelen, spare[6];
    } fs;
    long n;
    make_paths(&fp, root);
    clean(&fp);
    TRY(p, "statfs", sys_statfs(*root ? root : "/", &fs));
    wl_mix(p, (u32)fs.type);
    TRY(p, "mkdir", sys_mkdir(fp.dir, 0755));
    TRY(p, "mkdir-sub", sys_mkdir(fp.sub, 0755));
    wl_mix(p, (u32)sys_mkdir(fp.sub, 0755)); /* -EEXIST */
    TRY(p, "chdir", sys_chdir(fp.sub));
    n = TRY(p, "getcwd", sys2(NR_getcwd, (long)cwd, sizeof(cwd)));
    wl_mix_bytes(p, cwd, (u32)n);
    TRY(p, "chdir-back", sys_chdir("/"));
    if (files_of_sizes(p, &fp, big) || names_and_links(p, &fp) || descriptors(p, &fp)
        || blocked_lock(p, &fp) || flock_convert(p, &fp) || many_files(p, &fp) || fifo(p, &fp))
        return -1;
    TRY(p, "rmdir-sub", sys_rmdir(fp.sub));
    TRY(p, "rmdir", sys_rmdir(fp.dir));
    return 0;
}

/* /proc: its contents change from run to run, so only that each could be read */
static int proc_files(struct part *p)
{
    static const char *const files[] = {
        "/proc/slabinfo", "/proc/meminfo", "/proc/stat", "/proc/self/status", "/proc/self/maps",
        "/proc/interrupts", "/proc/net/dev", "/proc/loadavg", "/proc/uptime", "/proc/mounts",
    };
    u32 i;
    long fd, n, total = 0;
    for (i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        wl_mix(p, wl_read_file(files[i], (char *)wl_buffer, WL_BUFFER_BYTES) > 0);
    /* slabinfo in small reads: its iterator starts again part way down the cache chain
     * for each; then back to the start (seq_file's lseek) */
    fd = TRY(p, "slabinfo-open", sys_open("/proc/slabinfo", O_RDONLY, 0));
    while ((n = sys_read((int)fd, wl_buffer, 200)) > 0)
        total += n;
    wl_mix(p, n == 0 && total > 0);
    wl_mix(p, (u32)sys_lseek((int)fd, 0, SEEK_SET));
    wl_mix(p, sys_read((int)fd, wl_buffer, 100) > 0);
    sys_close((int)fd);
    return 0;
}

#define TIOCGPTN 0x80045430
#define TIOCSPTLCK 0x40045431

/* a Unix98 pty: lines written to the master come out of the slave (n_tty), and back */
static int pty(struct part *p)
{
    static char slave_path[32] = "/dev/pts/";
    struct kernel_termios t;
    u32 number = 0, unlock = 0, len;
    long master, slave, n;
    char buf[64];
    TRY(p, "mount-devpts", sys_mount("devpts", "/dev/pts", "devpts", 0, 0));
    master = sys_open("/dev/ptmx", O_RDWR | O_NOCTTY, 0);
    if (master < 0) {
        sys_umount("/dev/pts");
        return wl_fail(p, "ptmx", master);
    }
    TRY(p, "ptn", sys_ioctl((int)master, TIOCGPTN, &number));
    TRY(p, "unlockpt", sys_ioctl((int)master, TIOCSPTLCK, &unlock));
    len = 9; /* after "/dev/pts/": the pty's number (not hashed) */
    {
        char digits[12];
        u32 i = 0, v = number;
        do {
            digits[i++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (i)
            slave_path[len++] = digits[--i];
        slave_path[len] = '\0';
    }
    slave = sys_open(slave_path, O_RDWR | O_NOCTTY, 0);
    if (slave < 0) {
        sys_close((int)master);
        sys_umount("/dev/pts");
        return wl_fail(p, "pty-slave", slave);
    }
    TRY(p, "pty-tcgets", sys_ioctl((int)slave, TCGETS, &t));
    t.c_lflag &= ~(u32)ECHO; /* canonical, no echo */
    TRY(p, "pty-tcsets", sys_ioctl((int)slave, TCSETS, &t));
    TRY(p, "pty-write", wl_write_full((int)master, "through a pty\n", 14));
    n = TRY(p, "pty-read", sys_read((int)slave, buf, sizeof(buf))); /* one line */
    wl_mix_bytes(p, buf, (u32)n);
    TRY(p, "pty-answer", wl_write_full((int)slave, "back\n", 5));
    n = TRY(p, "pty-read-master", sys_read((int)master, buf, sizeof(buf)));
    wl_mix_bytes(p, buf, (u32)n); /* "back\r\n": onlcr */
    sys_close((int)slave);
    sys_close((int)master);
    TRY(p, "umount-devpts", sys_umount("/dev/pts"));
    return 0;
}

int part_file(struct part *p)
{
    long ret;
    TRY(p, "remount-rw", wl_root_writable(1));
    ret = walk(p, "", 300000);
    sys_chdir("/");
    TRY(p, "remount-ro", wl_root_writable(0));
    if (ret)
        return -1;
    sys_mkdir(RAMFS_MOUNT, 0755); /* normally in the image already */
    TRY(p, "mount-ramfs", sys_mount("ramfs", RAMFS_MOUNT, "ramfs", 0, 0));
    ret = walk(p, RAMFS_MOUNT, 1u << 20);
    sys_chdir("/");
    TRY(p, "umount-ramfs", sys_umount(RAMFS_MOUNT));
    if (ret)
        return -1;
    return pty(p) || proc_files(p) ? -1 : 0;
}
