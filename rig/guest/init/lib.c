#include "lib.h"

void *memset(void *dst, int c, u32 n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, u32 n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

u32 str_len(const char *s)
{
    u32 n = 0;
    while (s[n])
        n++;
    return n;
}

int str_eq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

int str_starts(const char *s, const char *prefix)
{
    while (*prefix)
        if (*s++ != *prefix++)
            return 0;
    return 1;
}

static int digit_value(char c, u32 base)
{
    u32 v;
    if (c >= '0' && c <= '9')
        v = (u32)(c - '0');
    else if (c >= 'a' && c <= 'f')
        v = (u32)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F')
        v = (u32)(c - 'A' + 10);
    else
        return -1;
    return v < base ? (int)v : -1;
}

int parse_u32(const char *s, u32 max, u32 *out)
{
    u32 base = 10;
    u64 value = 0;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return -1;
    for (; *s; s++) {
        int d = digit_value(*s, base);
        if (d < 0)
            return -1;
        value = value * base + (u32)d;
        if (value > max)
            return -1;
    }
    *out = (u32)value;
    return 0;
}

int is_decimal(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* digits with at most one '.', e.g. "0", "0.05", ".5" (a frame error rate) */
int is_decimal_fraction(const char *s)
{
    int digits = 0, dots = 0;
    for (; *s; s++) {
        if (*s == '.')
            dots++;
        else if (*s >= '0' && *s <= '9')
            digits++;
        else
            return 0;
    }
    return digits > 0 && dots <= 1;
}

void line_reset(struct line *l)
{
    l->len = 0;
}

static void line_char(struct line *l, char c)
{
    /* keep one byte spare for the newline line_emit adds */
    if (l->len < LINE_MAX_BYTES - 1)
        l->text[l->len++] = c;
}

void line_str(struct line *l, const char *s)
{
    while (*s)
        line_char(l, *s++);
}

void line_token(struct line *l, const char *s)
{
    for (; *s; s++)
        line_char(l, (*s > ' ' && *s < 0x7f) ? *s : '_');
}

void line_u64(struct line *l, u64 v)
{
    char digits[21];
    int n = 0;
    do {
        /* 64-bit division: __udivdi3/__umoddi3 from libgcc */
        digits[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v);
    while (n)
        line_char(l, digits[--n]);
}

void line_i32(struct line *l, long v)
{
    if (v < 0) {
        line_char(l, '-');
        line_u64(l, (u64)(-(long long)v));
    } else {
        line_u64(l, (u64)v);
    }
}

static void line_key(struct line *l, const char *key)
{
    line_char(l, ' ');
    line_str(l, key);
    line_char(l, '=');
}

void line_kv_str(struct line *l, const char *key, const char *value)
{
    line_key(l, key);
    line_token(l, value);
}

void line_kv_u64(struct line *l, const char *key, u64 value)
{
    line_key(l, key);
    line_u64(l, value);
}

void line_kv_i32(struct line *l, const char *key, long value)
{
    line_key(l, key);
    line_i32(l, value);
}

static void write_all(const char *p, u32 len)
{
    while (len) {
        long n = sys_write(CONSOLE_FD, p, len);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            return; /* nowhere to report it; never crash pid 1 */
        p += n;
        len -= (u32)n;
    }
}

void line_emit(struct line *l)
{
    l->text[l->len] = '\n';
    write_all(l->text, l->len + 1);
}

void console_puts(const char *s)
{
    write_all(s, str_len(s));
}

void emit_event(const char *name, const char *key, long value)
{
    static struct line l;
    line_reset(&l);
    line_str(&l, "@event ");
    line_token(&l, name);
    if (key)
        line_kv_i32(&l, key, value);
    line_emit(&l);
}
