/* Small freestanding helpers: strings, number parsing, line building, console output. */
#ifndef TRAPSPLICE_LIB_H
#define TRAPSPLICE_LIB_H

#include "sys.h"

#define CONSOLE_FD 1
#define LINE_MAX_BYTES 1024

/* a line under construction; appends past the end are dropped, never overflow */
struct line {
    char text[LINE_MAX_BYTES];
    u32 len;
};

/* gcc may emit calls to these even with -ffreestanding */
void *memset(void *dst, int c, u32 n);
void *memcpy(void *dst, const void *src, u32 n);

u32 str_len(const char *s);
int str_eq(const char *a, const char *b);
/* 1 if s starts with prefix */
int str_starts(const char *s, const char *prefix);

/* decimal, or hex with 0x; 0 on success, -1 on anything else (empty, junk, > max) */
int parse_u32(const char *s, u32 max, u32 *out);
/* 1 if s is a non-empty run of decimal digits */
int is_decimal(const char *s);
int is_decimal_fraction(const char *s);

void line_reset(struct line *l);
void line_str(struct line *l, const char *s);
/* like line_str but whitespace and non-printables become '_' so a value stays one token */
void line_token(struct line *l, const char *s);
void line_u64(struct line *l, u64 v);
void line_i32(struct line *l, long v);
void line_kv_str(struct line *l, const char *key, const char *value);
void line_kv_u64(struct line *l, const char *key, u64 value);
void line_kv_i32(struct line *l, const char *key, long value);

/* write the line plus '\n' to the console in one write */
void line_emit(struct line *l);
void console_puts(const char *s);

/* `@event <name>` line with one optional key=value; for boot-time notes */
void emit_event(const char *name, const char *key, long value);

#endif
