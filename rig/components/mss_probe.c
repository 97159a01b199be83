/* mss_probe: a wrap component on tcp_sync_mss's entry.
 *
 * It runs before 2.4.20's own tcp_sync_mss(sk, pmtu), records the call and may lower the path
 * MTU argument by `shrink` bytes, so the original code then computes a smaller MSS: the
 * observable proof that a wrap sees (and can change) the original arguments and that the
 * displaced instructions and the original function still run afterwards.
 */
#include <linux/types.h>
#include "trapsplice.h"

u32 shrink;          /* bytes taken off the pmtu argument */
u32 calls;           /* times the wrap ran */
u32 last_pmtu;       /* pmtu argument as the caller passed it, last call */

TRAPSPLICE_WRAP(tcp_sync_mss, mss_probe_enter);
TRAPSPLICE_PARAM(shrink, 1, "bytes to take off tcp_sync_mss's pmtu argument");

void mss_probe_enter(struct trapsplice_frame *frame)
{
	/* tcp_sync_mss(struct sock *sk, u32 pmtu): args[0] = sk, args[1] = pmtu */
	calls++;
	last_pmtu = frame->args[1];
	if (shrink && shrink < frame->args[1])
		frame->args[1] -= shrink;
}
