/* workload part `memory`: anonymous and file mappings, page faults,
 * copy-on-write across fork, mprotect, munmap, mremap, brk, mlock, madvise,
 * mincore, and one short dip towards the low-memory watermarks (so the page
 * allocator's slow paths, kswapd and the slab reaper run) that stops well before
 * the OOM killer could act. */
#include "workload.h"

#define PAGE 4096u
#define ANON_BYTES (4u << 20)
#define COW_BYTES (8u << 20)
#define MAP_FILE_PATH "/wlmap"
#define MAP_FILE_BYTES (64u * 1024u)
/* the dip stops when free memory falls below this (2.4's pages_low for the
 * normal zone of a 64 MiB guest is ~0.7 MiB; the OOM killer needs ~1 s of
 * failed reclaim) */
#define DIP_FREE_FLOOR (560u * 1024u)
#define DIP_MAX_BYTES (56u << 20)
#define DIP_STEP (256u * 1024u)
#define DIP_CHUNK (1u << 20)
#define DIP_CACHE_PATH "/wlcache"
#define DIP_CACHE_BYTES (1u << 20)
#define DIP_MAPPED_PATH "/wlmapped"
#define DIP_MAPPED_BYTES (2u << 20)

static u32 page_word(u32 seed, u32 page)
{
    return (page + 1) * 2654435761u ^ seed;
}

static void *map_anon(u32 bytes)
{
    return sys_mmap(0, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}

/* one word per page, so every page is faulted in */
static void stamp_pages(u8 *base, u32 bytes, u32 seed, u32 stride)
{
    u32 page;
    for (page = 0; page < bytes / PAGE; page += stride)
        *(u32 *)(base + page * PAGE + (page % 1000) * 4) = page_word(seed, page);
}

static u32 pages_matching(const u8 *base, u32 bytes, u32 seed, u32 stride)
{
    u32 page, good = 0;
    for (page = 0; page < bytes / PAGE; page += stride)
        good += *(const u32 *)(base + page * PAGE + (page % 1000) * 4) == page_word(seed, page);
    return good;
}

static int anonymous(struct part *p)
{
    static u8 vec[ANON_BYTES / PAGE];
    u8 *base = map_anon(ANON_BYTES), *moved;
    CHECK(p, "anon-mmap", !mmap_failed(base), (long)base);
    wl_mix(p, (u32)sys_mincore(base, ANON_BYTES, vec)); /* 2.4: -ENOMEM, anonymous */
    stamp_pages(base, ANON_BYTES, 1, 1);
    wl_mix(p, pages_matching(base, ANON_BYTES, 1, 1));
    /* MADV_DONTNEED on private anonymous memory: those pages read back as zeros */
    TRY(p, "madvise", sys_madvise(base, 64 * PAGE, MADV_DONTNEED));
    wl_mix(p, pages_matching(base, 128 * PAGE, 1, 1)); /* 64 of 128 */
    TRY(p, "mlock", sys_mlock(base + 256 * PAGE, 16 * PAGE));
    TRY(p, "munlock", sys_munlock(base + 256 * PAGE, 16 * PAGE));
    /* mremap: grow the third MiB to 2 MiB (the fourth is in the way: it moves); contents kept */
    stamp_pages(base + (2u << 20), 1u << 20, 11, 1);
    moved = (u8 *)sys_mremap(base + (2u << 20), 1u << 20, 2u << 20, MREMAP_MAYMOVE);
    CHECK(p, "mremap", !mmap_failed(moved), (long)moved);
    wl_mix(p, pages_matching(moved, 1u << 20, 11, 1));
    stamp_pages(moved + (1u << 20), 1u << 20, 2, 1);
    wl_mix(p, pages_matching(moved + (1u << 20), 1u << 20, 2, 1));
    TRY(p, "munmap-moved", sys_munmap(moved, 2u << 20));
    TRY(p, "munmap", sys_munmap(base, ANON_BYTES));
    return 0;
}

struct cow_pipe {
    u8 *base;
    int fds[2];
};

static int cow_child(void *arg)
{
    struct cow_pipe *cow = arg;
    u32 result[2];
    result[0] = pages_matching(cow->base, COW_BYTES, 3, 1); /* the parent's data, shared */
    stamp_pages(cow->base, COW_BYTES, 4, 2);                /* copies of every other page */
    result[1] = pages_matching(cow->base, COW_BYTES, 4, 2);
    return wl_write_full(cow->fds[1], result, sizeof(result)) == sizeof(result) ? 0 : 1;
}

static int copy_on_write(struct part *p)
{
    static struct cow_pipe cow;
    u32 result[2];
    int status = 0;
    long pid;
    cow.base = map_anon(COW_BYTES);
    CHECK(p, "cow-mmap", !mmap_failed(cow.base), (long)cow.base);
    stamp_pages(cow.base, COW_BYTES, 3, 1);
    TRY(p, "cow-pipe", sys_pipe(cow.fds));
    pid = TRY(p, "cow-fork", wl_spawn(cow_child, &cow));
    CHECK(p, "cow-read", wl_read_full(cow.fds[0], result, sizeof(result)) == sizeof(result), 0);
    TRY(p, "cow-wait", wl_wait((int)pid, &status));
    wl_mix(p, result[0]);
    wl_mix(p, result[1]);
    wl_mix(p, (u32)wl_status_code(status));
    wl_mix(p, pages_matching(cow.base, COW_BYTES, 3, 1)); /* untouched by the child */
    /* the parent writes after the child is gone: pages are its own again */
    stamp_pages(cow.base, COW_BYTES, 5, 3);
    wl_mix(p, pages_matching(cow.base, COW_BYTES, 5, 3));
    sys_close(cow.fds[0]);
    sys_close(cow.fds[1]);
    TRY(p, "cow-munmap", sys_munmap(cow.base, COW_BYTES));
    return 0;
}

static int write_readonly(void *arg)
{
    *(volatile u32 *)arg = 1;
    return 0;
}

static int protections(struct part *p)
{
    int status = 0;
    long pid;
    u8 *base = map_anon(16 * PAGE);
    CHECK(p, "prot-mmap", !mmap_failed(base), (long)base);
    stamp_pages(base, 16 * PAGE, 6, 1);
    TRY(p, "mprotect-ro", sys_mprotect(base, 16 * PAGE, PROT_READ));
    wl_mix(p, pages_matching(base, 16 * PAGE, 6, 1));
    pid = TRY(p, "prot-fork", wl_spawn(write_readonly, base + 5 * PAGE));
    TRY(p, "prot-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status)); /* SIGSEGV */
    TRY(p, "mprotect-rw", sys_mprotect(base + 4 * PAGE, 4 * PAGE, PROT_READ | PROT_WRITE)); /* splits the vma */
    stamp_pages(base + 4 * PAGE, 4 * PAGE, 7, 1);
    /* a hole in the middle: touching it faults */
    TRY(p, "munmap-middle", sys_munmap(base + 8 * PAGE, 2 * PAGE));
    pid = TRY(p, "hole-fork", wl_spawn(write_readonly, base + 9 * PAGE));
    TRY(p, "hole-wait", wl_wait((int)pid, &status));
    wl_mix(p, (u32)wl_status_code(status));
    TRY(p, "prot-munmap", sys_munmap(base, 16 * PAGE));
    return 0;
}

static int file_mappings(struct part *p)
{
    long fd;
    u8 *shared, *private_map;
    u32 i, h;
    sys_unlink(MAP_FILE_PATH);
    fd = TRY(p, "map-create", sys_open(MAP_FILE_PATH, O_RDWR | O_CREAT | O_TRUNC, 0600));
    wl_fill(wl_buffer, MAP_FILE_BYTES, 8, 0);
    TRY(p, "map-write", wl_write_full((int)fd, wl_buffer, MAP_FILE_BYTES));
    shared = sys_mmap(0, MAP_FILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, (int)fd, 0);
    CHECK(p, "map-shared", !mmap_failed(shared), (long)shared);
    private_map = sys_mmap(0, MAP_FILE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE, (int)fd, 0);
    CHECK(p, "map-private", !mmap_failed(private_map), (long)private_map);
    wl_mix(p, wl_fnv32(shared, MAP_FILE_BYTES));
    wl_mix(p, wl_fnv32(private_map + PAGE, PAGE));
    {
        static u8 vec[MAP_FILE_BYTES / PAGE];
        u32 resident = 0;
        TRY(p, "mincore", sys_mincore(shared, MAP_FILE_BYTES, vec));
        for (i = 0; i < sizeof(vec); i++)
            resident += vec[i] & 1;
        wl_mix(p, resident); /* just written: all in the page cache */
    }
    for (i = 0; i < MAP_FILE_BYTES; i += 512)
        private_map[i] ^= 0x5a; /* copies; the file stays as it was */
    for (i = 0; i < MAP_FILE_BYTES; i += 1024)
        shared[i] = (u8)(i >> 10); /* goes to the file */
    TRY(p, "msync", sys_msync(shared, MAP_FILE_BYTES, MS_SYNC));
    CHECK(p, "map-pread", sys_pread((int)fd, wl_buffer2, MAP_FILE_BYTES, 0) == (long)MAP_FILE_BYTES, 0);
    wl_mix(p, wl_fnv32(wl_buffer2, MAP_FILE_BYTES));
    wl_mix(p, wl_fnv32(private_map, MAP_FILE_BYTES));
    /* a write() shows through the shared mapping (one page cache) */
    TRY(p, "map-pwrite", sys_pwrite((int)fd, "mapped", 6, 2 * PAGE));
    wl_mix_bytes(p, shared + 2 * PAGE, 6);
    h = wl_fnv32(shared, MAP_FILE_BYTES);
    wl_mix(p, h);
    TRY(p, "map-munmap", sys_munmap(shared, MAP_FILE_BYTES));
    TRY(p, "map-munmap2", sys_munmap(private_map, MAP_FILE_BYTES));
    TRY(p, "map-truncate", sys_ftruncate((int)fd, PAGE));
    sys_close((int)fd);
    TRY(p, "map-unlink", sys_unlink(MAP_FILE_PATH));
    return 0;
}

static int program_break(struct part *p)
{
    u32 start = (u32)sys_brk(0), end;
    end = (u32)sys_brk(start + (1u << 20));
    wl_mix(p, end - start);
    CHECK(p, "brk-grow", end == start + (1u << 20), end - start);
    stamp_pages((u8 *)((start + PAGE - 1) & ~(PAGE - 1)), (1u << 20) - PAGE, 9, 1);
    wl_mix(p, pages_matching((u8 *)((start + PAGE - 1) & ~(PAGE - 1)), (1u << 20) - PAGE, 9, 1));
    wl_mix(p, (u32)sys_brk(start) - start); /* back: 0 */
    return 0;
}

struct sysinfo32 {
    long uptime;
    u32 loads[3];
    u32 totalram, freeram, sharedram, bufferram, totalswap, freeswap;
    u16 procs, pad;
    u32 totalhigh, freehigh, mem_unit;
    char reserved[8];
};

/* Touch memory until free memory reaches the floor, then let it all go.  A
 * clean, unmapped 1 MiB file in the page cache is there for reclaim to take.
 * Older than it on the inactive list, a sparse 2 MiB file mapped and read a
 * page at a time: more mapped pages in a row than reclaim tolerates in one scan
 * (at most 1/60 of the inactive list), so a scan that reaches them gives up,
 * unmaps pages (swap_out) and shrinks the dentry and inode caches
 * (kmem_cache_shrink) before it tries again and takes from the clean file.  (A
 * scan for the DMA zone only passes over them, to the head of the list: with
 * 512 KiB a third of the dips never met them in a scan for the normal zone.)
 * The dip runs real-time until reclaim first takes some of it (so it meets the
 * watermarks itself, in __alloc_pages' slow path, before kswapd can run), then
 * as an ordinary process (kswapd reclaims, the slab reaper destroys slabs) until
 * three quarters of it are gone or free memory is at the floor: whoever reclaims always
 * finds something, and the OOM killer never has a reason to act.
 * Anonymous memory is mapped a chunk at a time, as 2.4's overcommit check
 * allows (a refused chunk ends it); below 2 MiB free it goes a page at a time. */
static int dip(void *unused)
{
    static u8 *chunks[DIP_MAX_BYTES / DIP_CHUNK];
    static u8 vec[DIP_CACHE_BYTES / PAGE];
    struct sysinfo32 info;
    u32 used = 0, count = 0, i, resident, step, free_bytes, shared = 0;
    u8 *cache, *mapped;
    long fd, mapped_fd;
    (void)unused;
    mapped_fd = sys_open(DIP_MAPPED_PATH, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (mapped_fd < 0 || sys_ftruncate((int)mapped_fd, DIP_MAPPED_BYTES) < 0)
        return 8;
    mapped = sys_mmap(0, DIP_MAPPED_BYTES, PROT_READ, MAP_SHARED, (int)mapped_fd, 0);
    if (mmap_failed(mapped))
        return 9;
    for (i = 0; i < DIP_MAPPED_BYTES; i += PAGE) /* holes: each page read as zeros, and mapped */
        if (*(volatile u8 *)(mapped + i) != 0)
            return 10;
    fd = sys_open(DIP_CACHE_PATH, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return 3;
    for (i = 0; i < DIP_CACHE_BYTES; i += WL_BUFFER_BYTES) {
        wl_fill(wl_buffer, WL_BUFFER_BYTES, 12, i);
        if (wl_write_full((int)fd, wl_buffer, WL_BUFFER_BYTES) != (long)WL_BUFFER_BYTES)
            return 4;
    }
    if (sys_fsync((int)fd) < 0)
        return 5;
    cache = sys_mmap(0, DIP_CACHE_BYTES, PROT_READ, MAP_SHARED, (int)fd, 0); /* never touched: mincore only */
    if (mmap_failed(cache))
        return 6;
    /* real-time, so kswapd (SCHED_OTHER) cannot run first on this one CPU: the
     * dip itself meets the watermarks and reclaims in __alloc_pages' slow path */
    {
        int priority = 1;
        if (sys3(NR_sched_setscheduler, 0, 1 /* SCHED_FIFO */, (long)&priority) < 0)
            return 7;
    }
    while (used < DIP_MAX_BYTES) {
        if (sys_sysinfo(&info) < 0 || sys_mincore(cache, DIP_CACHE_BYTES, vec) < 0)
            return 2;
        for (i = 0, resident = 0; i < sizeof(vec); i++)
            resident += vec[i] & 1;
        free_bytes = info.freeram * info.mem_unit;
        if (free_bytes < DIP_FREE_FLOOR || resident < sizeof(vec) / 4)
            break;
        if (resident < sizeof(vec) && !shared) { /* reclaim has begun: let kswapd take its turns too */
            int priority = 0;
            sys3(NR_sched_setscheduler, 0, 0 /* SCHED_OTHER */, (long)&priority);
            shared = 1;
        }
        step = free_bytes > (2u << 20) ? DIP_STEP : PAGE;
        if (used % DIP_CHUNK == 0) {
            chunks[count] = map_anon(DIP_CHUNK);
            if (mmap_failed(chunks[count]))
                break;
            count++;
        }
        stamp_pages(chunks[count - 1] + used % DIP_CHUNK, step, 10, 1);
        used += step;
    }
    for (i = 0; i < count; i++)
        sys_munmap(chunks[i], DIP_CHUNK);
    sys_munmap(cache, DIP_CACHE_BYTES);
    sys_close((int)fd);
    sys_munmap(mapped, DIP_MAPPED_BYTES);
    sys_close((int)mapped_fd);
    return 0;
}

int part_memory(struct part *p)
{
    int status = 0;
    long pid, ret;
    if (anonymous(p) || copy_on_write(p) || protections(p))
        return -1;
    if (program_break(p))
        return -1;
    TRY(p, "remount-rw", wl_root_writable(1));
    ret = file_mappings(p);
    if (ret == 0) {
        pid = wl_spawn(dip, 0);
        if (pid < 0)
            ret = wl_fail(p, "dip-fork", pid);
        else if (wl_wait((int)pid, &status) < 0 || status != 0)
            ret = wl_fail(p, "dip", wl_status_code(status));
    }
    sys_unlink(DIP_CACHE_PATH);
    sys_unlink(DIP_MAPPED_PATH);
    TRY(p, "remount-ro", wl_root_writable(0));
    return ret;
}
