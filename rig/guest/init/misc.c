/* Small commands: ping, uname, netenv. */
#include "commands.h"

int cmd_ping(struct request *req)
{
    line_kv_u64(&req->reply, "pong", 1);
    return 0;
}

int cmd_uname(struct request *req)
{
    static struct utsname uts;
    long ret = sys_uname(&uts);
    if (ret < 0)
        return fail_errno(req, "uname syscall failed", ret);
    line_kv_str(&req->reply, "sysname", uts.sysname);
    line_kv_str(&req->reply, "release", uts.release);
    line_kv_str(&req->reply, "version", uts.version); /* spaces become '_' */
    line_kv_str(&req->reply, "machine", uts.machine);
    return 0;
}

/* `netenv fer=<decimal>`: announce a (simulated) network-environment change as
 * an unsolicited event before the reply, as a real detector inside init would. */
int cmd_netenv(struct request *req)
{
    static struct line event;
    const char *value;
    if (req->argc != 2 || !str_starts(req->argv[1], "fer="))
        return fail(req, "usage: netenv fer=<decimal>");
    value = req->argv[1] + 4;
    if (!is_decimal_fraction(value))
        return fail(req, "netenv: fer must be a decimal number such as 0.05");
    line_reset(&event);
    line_str(&event, "@event netenv");
    line_kv_str(&event, "fer", value);
    line_emit(&event);
    return 0;
}
