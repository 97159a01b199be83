/* mss_adapt: tcp_sync_mss() of Linux 2.4.20 that adapts the MSS to the link's frame error rate.
 *
 * The paper (section 3.1.1, after its reference [4], Choi, Choi and Yoo, "Adapting TCP Segment
 * Size in Cellular Networks", 2005): at a low frame error rate (FER) larger segments give more
 * throughput; at a high FER the trend reverses, so the sender should use smaller segments.
 *
 * The rule used here (ours, made explicit so it can be checked):
 *   1. compute the MSS exactly as 2.4.20's tcp_sync_mss() does (net/ipv4/tcp_output.c): base;
 *   2. a segment of (MSS + 40) bytes of TCP/IP crosses the link as ceil((MSS + 40) / frame)
 *      link frames and arrives only if every frame does: P(ok) = (1 - FER)^frames;
 *   3. allow the largest whole number of frames n with (1 - FER)^n >= target, but at least one
 *      frame; the adapted MSS is min(base, n * frame - 40).
 * So FER = 0 keeps 2.4.20's MSS, and a rising FER lowers it step by step. Integer arithmetic
 * only (no FPU in the kernel): fer and target in parts per million, frame in bytes.
 *
 * Defaults: frame 256 bytes, target 90 % segment survival. With them, for a 16396-byte base MSS:
 * FER 0.001 -> 16396 (kept), 0.01 -> 2520, 0.05 -> 472, >= 0.1 -> 216.
 */
#include <linux/kernel.h>
#include <net/tcp.h>
#include <asm/div64.h>
#include "trapsplice.h"

#define PPM 1000000UL
#define TCPIP_HEADERS 40

u32 fer;                    /* frame error rate, parts per million */
u32 frame = 256;            /* link frame payload, bytes */
u32 target = 900000;        /* required segment survival probability, ppm */
u32 calls;                  /* how many times the kernel called us */
u32 last_base_mss;          /* what 2.4.20 would have used, last call */
u32 last_mss;               /* what we used, last call */

TRAPSPLICE_REPLACE(tcp_sync_mss, mss_adapt_sync_mss);
TRAPSPLICE_PARAM(fer, 1000000, "frame error rate (0..1)");
TRAPSPLICE_PARAM(frame, 1, "link frame payload in bytes");
TRAPSPLICE_PARAM(target, 1000000, "segment survival probability to keep (0..1)");

/* 2.4.20's tcp_sync_mss() body, statement for statement, minus the stores. */
static int base_mss(struct sock *sk, u32 pmtu)
{
	struct tcp_opt *tp = &sk->tp_pinfo.af_tcp;
	int mss_now;

	mss_now = pmtu - tp->af_specific->net_header_len - sizeof(struct tcphdr);
	if (mss_now > tp->mss_clamp)
		mss_now = tp->mss_clamp;
	mss_now -= tp->ext_header_len;
	if (mss_now < 48)
		mss_now = 48;
	mss_now -= tp->tcp_header_len - sizeof(struct tcphdr);
	if (tp->max_window && mss_now > (tp->max_window>>1))
		mss_now = max((tp->max_window>>1), 68U - tp->tcp_header_len);
	return mss_now;
}

/* Largest n >= 1 with (1 - fer)^n >= target, or `limit` if more frames than that survive. */
static u32 frames_allowed(u32 fer_ppm, u32 target_ppm, u32 limit)
{
	u32 survival = PPM, n = 0;

	if (fer_ppm >= PPM)
		return 1;
	while (n < limit) {
		u64 next = (u64)survival * (PPM - fer_ppm);
		do_div(next, PPM);
		if ((u32)next < target_ppm)
			break;
		survival = (u32)next;
		n++;
	}
	return n ? n : 1;
}

static int adapt(int mss)
{
	u32 need, n;

	if (fer == 0 || frame <= TCPIP_HEADERS || mss <= 0)
		return mss;
	need = (mss + TCPIP_HEADERS + frame - 1) / frame;  /* frames a full segment takes */
	n = frames_allowed(fer, target, need);
	if (n >= need)
		return mss;
	return (int)(n * frame) - TCPIP_HEADERS;
}

int mss_adapt_sync_mss(struct sock *sk, u32 pmtu)
{
	struct tcp_opt *tp = &sk->tp_pinfo.af_tcp;
	int base = base_mss(sk, pmtu);
	int mss_now = adapt(base);

	calls++;
	last_base_mss = base;
	last_mss = mss_now;
	/* And store cached results (as 2.4.20 does) */
	tp->pmtu_cookie = pmtu;
	tp->mss_cache = mss_now;
	return mss_now;
}
