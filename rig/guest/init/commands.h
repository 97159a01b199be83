/* The request/reply contract between the dispatcher and command handlers.
 *
 * A handler fills req->reply with ` key=value` pairs and returns 0, or puts a
 * message in req->reply (after line_reset) and returns -1.  The dispatcher
 * then writes exactly one `@<id> ok ...` or `@<id> err ...` line.
 * Adding a command: write a handler, add a row to the table in init.c.
 */
#ifndef TRAPSPLICE_COMMANDS_H
#define TRAPSPLICE_COMMANDS_H

#include "lib.h"

#define MAX_ARGS 16

struct request {
    const char *id;
    int argc;              /* argv[0] is the command name */
    char *argv[MAX_ARGS];
    struct line reply;     /* ok: " k=v" pairs; err: the message */
};

typedef int (*command_handler)(struct request *req);

struct command {
    const char *name;
    command_handler handler;
    const char *usage;
};

/* helpers for handlers: set the error message and return -1 */
int fail(struct request *req, const char *message);
/* message plus " (errno N)" for a failed syscall returning -N */
int fail_errno(struct request *req, const char *message, long ret);

/* handlers, grouped by file */
int cmd_ping(struct request *req);     /* misc.c */
int cmd_uname(struct request *req);    /* misc.c */
int cmd_netenv(struct request *req);   /* misc.c */
int cmd_bench(struct request *req);    /* bench.c */
int cmd_user_int(struct request *req); /* user_int.c */
int cmd_tcp_mss(struct request *req);  /* net.c */
int cmd_workload(struct request *req); /* workload.c */
int cmd_help(struct request *req);     /* init.c: needs the table */

/* boot-time setup done by net.c */
long loopback_up(void);

#endif
