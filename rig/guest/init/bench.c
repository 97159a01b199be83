/* `bench <kind> N`: rdtsc-timed loops and their statistics.
 *
 * Timing is a plain `rdtsc` pair, not serialized: i686 has no lfence, and
 * cpuid (the i686 serializer) costs far more than the intervals measured here
 * and would dominate them.  Under QEMU TCG instructions retire in order, so the
 * plain pair brackets exactly the code between them.  Deltas are raw (nothing
 * subtracted); `bench null` and the tsc_overhead field report the floor.
 * Only the low 32 bits are used: a single interval never spans 2^32 ticks.
 */
#include "commands.h"

#define BENCH_MAX_N (1u << 18)

static u32 deltas[BENCH_MAX_N];

/* empty interval: the timer floor */
static inline u32 time_null(void)
{
    u32 start, end;
    __asm__ volatile("rdtsc\n\t"
                     "movl %%eax, %1\n\t"
                     "rdtsc"
                     : "=a"(end), "=r"(start) : : "edx");
    return end - start;
}

/* one taken jmp between the rdtscs: the user-mode floor of a jmp */
static inline u32 time_jmp(void)
{
    u32 start, end;
    __asm__ volatile("rdtsc\n\t"
                     "movl %%eax, %1\n\t"
                     "jmp 1f\n"
                     "1:\n\t"
                     "rdtsc"
                     : "=a"(end), "=r"(start) : : "edx");
    return end - start;
}

/* one getpid system call; the kernel preserves every register but eax */
static inline u32 time_getpid(long *pid)
{
    u32 start, end;
    long result;
    __asm__ volatile("rdtsc\n\t"
                     "movl %%eax, %1\n\t"
                     "movl %3, %%eax\n\t"
                     "int $0x80\n\t"
                     "movl %%eax, %2\n\t"
                     "rdtsc"
                     : "=a"(end), "=&S"(start), "=&D"(result)
                     : "i"(NR_getpid)
                     : "edx", "memory");
    *pid = result;
    return end - start;
}

static void sift_down(u32 *a, u32 root, u32 n)
{
    for (;;) {
        u32 child = 2 * root + 1;
        u32 tmp;
        if (child >= n)
            return;
        if (child + 1 < n && a[child + 1] > a[child])
            child++;
        if (a[root] >= a[child])
            return;
        tmp = a[root];
        a[root] = a[child];
        a[child] = tmp;
        root = child;
    }
}

/* heapsort: O(n log n), no recursion, no extra memory */
static void sort_u32(u32 *a, u32 n)
{
    u32 i;
    for (i = n / 2; i-- > 0;)
        sift_down(a, i, n);
    for (i = n; i-- > 1;) {
        u32 tmp = a[0];
        a[0] = a[i];
        a[i] = tmp;
        sift_down(a, 0, i);
    }
}

static u32 min_null_overhead(u32 n)
{
    u32 best = 0xffffffffu;
    u32 i;
    for (i = 0; i < n; i++) {
        u32 d = time_null();
        if (d < best)
            best = d;
    }
    return best;
}

/* n= min= median= mean= p95= max=  (median is the upper median for even n) */
static void report_stats(struct request *req, u32 *a, u32 n)
{
    u64 sum = 0;
    u32 i;
    for (i = 0; i < n; i++)
        sum += a[i];
    sort_u32(a, n);
    line_kv_u64(&req->reply, "n", n);
    line_kv_u64(&req->reply, "min", a[0]);
    line_kv_u64(&req->reply, "median", a[n / 2]);
    line_kv_u64(&req->reply, "mean", sum / n);
    line_kv_u64(&req->reply, "p95", a[(u32)(((u64)n * 95 + 99) / 100) - 1]);
    line_kv_u64(&req->reply, "max", a[n - 1]);
}

int cmd_bench(struct request *req)
{
    const char *kind;
    u32 n, i;
    if (req->argc != 3)
        return fail(req, "usage: bench getpid|null|jmp N");
    kind = req->argv[1];
    if (parse_u32(req->argv[2], BENCH_MAX_N, &n) != 0 || n == 0)
        return fail(req, "bench: N must be a number from 1 to 262144");

    if (str_eq(kind, "getpid")) {
        long first_pid = 0, pid;
        int pid_ok = 1;
        for (i = 0; i < n; i++) {
            deltas[i] = time_getpid(&pid);
            if (i == 0)
                first_pid = pid;
            else if (pid != first_pid)
                pid_ok = 0;
        }
        report_stats(req, deltas, n);
        line_kv_u64(&req->reply, "tsc_overhead", min_null_overhead(n));
        line_kv_i32(&req->reply, "pid", first_pid);
        line_kv_u64(&req->reply, "pid_ok", (u64)pid_ok);
        return 0;
    }
    if (str_eq(kind, "null")) {
        for (i = 0; i < n; i++)
            deltas[i] = time_null();
    } else if (str_eq(kind, "jmp")) {
        for (i = 0; i < n; i++)
            deltas[i] = time_jmp();
    } else {
        return fail(req, "bench: unknown kind (known: getpid,null,jmp)");
    }
    report_stats(req, deltas, n);
    line_kv_u64(&req->reply, "tsc_overhead", min_null_overhead(n));
    return 0;
}
