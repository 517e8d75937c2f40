// SPDX-License-Identifier: GPL-2.0
// TCP state changes from the tracepoint sock:inet_sock_set_state, for tcpstate-exporter.
//
// Attached as tp_btf (a BTF-typed raw tracepoint): the program gets the `struct sock *`
// itself, so it can read the socket cookie and the network namespace, which the classic
// tracepoint record does not carry. Every transition is counted in maps (exact even when
// the ring buffer is full); events are sent only for the transitions user space asked
// for, and a failed reservation is counted, never waited on. With the namespace filter
// on, transitions of namespaces user space does not sample are neither counted nor
// sent (only tallied in counters.filtered).
//
// No vmlinux.h: the few kernel types read here are declared in kernel_types.h with
// preserve_access_index, so field offsets are CO-RE relocations that the loader
// resolves against the running kernel's BTF. The build needs clang and libbpf's
// headers only, not the build machine's kernel.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "kernel_types.h"
#include "state_change.h"

// Set by the loader before the program is loaded; constant for the verifier, which
// drops the code a setting turns off.
// Bit s set: send an event for every transition from or to state s.
const volatile __u32 event_states = 0xffffffff;
// Non-zero: also count transitions per network namespace (one hash lookup each).
const volatile __u32 count_per_netns = 0;
// Non-zero: only namespaces in NETNS_FILTER are counted and sent; user space keeps the
// map equal to the namespaces it samples, so other namespaces' churn never reaches the
// ring (one hash lookup per transition).
const volatile __u32 filter_netns = 0;
// Non-zero: wake the reader only once this many bytes wait in the ring (else the
// kernel's default: a wake-up whenever the reader had caught up), so a burst costs
// one wake-up per this many bytes, not one per event; the reader polls with a timeout
// for what stays below the mark.
const volatile __u32 wakeup_bytes = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); // replaced by the loader (EventsConfig::ring_bytes)
} EVENTS SEC(".maps");

// Global counters, one copy per CPU: exact and contention-free. Two slots: SLOT_MAIN
// and SLOT_NESTED (see inet_sock_set_state_nested).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct counters);
} COUNTERS SEC(".maps");

// The namespaces whose transitions count (key: namespace inode), when filter_netns is
// set. Value: NETNS_SAMPLED, plus NETNS_EVERY_TRANSITION for a namespace user space
// follows socket by socket (every transition of it is sent, whatever event_states says).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096); // replaced by the loader (EventsConfig::filter_keys)
	__type(key, __u32);
	__type(value, __u8);
} NETNS_FILTER SEC(".maps");

// Transitions per network namespace, one copy per CPU (no atomics, no cache line
// shared between CPUs). Bounded; a transition whose key no longer fits is counted in
// counters.netns_overflow (still in the global matrix).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4096); // replaced by the loader (EventsConfig::netns_keys)
	__type(key, struct netns_transition);
	__type(value, __u64);
} NETNS_TRANSITIONS SEC(".maps");

static __always_inline void count_in_netns(struct counters *c, __u32 inum, __u32 from, __u32 to,
					   __u16 slot)
{
	struct netns_transition key = { .netns_inum = inum, .from = from, .to = to, .slot = slot };
	__u64 one = 1, *count = bpf_map_lookup_elem(&NETNS_TRANSITIONS, &key);

	if (count) {
		(*count)++;
		return;
	}
	// Sets this CPU's copy to 1 and the others to 0. Another CPU may have inserted the
	// key meanwhile: then count in this CPU's copy of its entry.
	if (bpf_map_update_elem(&NETNS_TRANSITIONS, &key, &one, BPF_NOEXIST) == 0)
		return;
	count = bpf_map_lookup_elem(&NETNS_TRANSITIONS, &key);
	if (count)
		(*count)++;
	else
		c->netns_overflow++;
}

// Counts one transition in `c` (this program's slot) and sends its event.
static __always_inline void handle(struct counters *c, __u16 slot, struct sock *sk, __u64 from,
				   __u64 to)
{
	struct state_change *e;
	struct net *net;

	if (sk->sk_protocol != IPPROTO_TCP)
		return;
	net = sk->__sk_common.skc_net.net;
	__u32 inum = net->ns.inum;
	__u8 *netns_flags = 0;
	if (filter_netns) {
		netns_flags = bpf_map_lookup_elem(&NETNS_FILTER, &inum);
		if (!netns_flags) {
			c->filtered++;
			return;
		}
	}
	if (from >= TCP_STATE_SLOTS || to >= TCP_STATE_SLOTS) {
		c->unknown_states++;
		return;
	}
	// Checked again, as one index the compiler cannot see through (the asm): compilers
	// compute an index from a copy of the register they checked, which the verifier
	// then sees as unbounded.
	__u64 index = from * TCP_STATE_SLOTS + to;
	asm volatile("" : "+r"(index));
	if (index >= TCP_STATE_SLOTS * TCP_STATE_SLOTS)
		return;
	(&c->transitions[0][0])[index]++;
	if (count_per_netns)
		count_in_netns(c, inum, from, to, slot);

	if (!(event_states & ((1u << from) | (1u << to))) &&
	    !(netns_flags && (*netns_flags & NETNS_EVERY_TRANSITION)))
		return;
	e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		c->lost++;
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	e->cookie = bpf_get_socket_cookie(sk);
	e->netns_cookie = net->net_cookie;
	e->netns_inum = inum;
	e->family = sk->__sk_common.skc_family;
	e->local_port = sk->__sk_common.skc_num;
	e->remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	e->old_state = from;
	e->new_state = to;
	e->bound_dev_if = sk->__sk_common.skc_bound_dev_if;
	if (e->family == AF_INET6_VALUE) {
		__builtin_memcpy(e->local_addr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(e->remote_addr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		__builtin_memset(e->local_addr, 0, 16);
		__builtin_memset(e->remote_addr, 0, 16);
		__builtin_memcpy(e->local_addr, &sk->__sk_common.skc_rcv_saddr, 4);
		__builtin_memcpy(e->remote_addr, &sk->__sk_common.skc_daddr, 4);
	}
	__u64 wakeup = 0;
	if (wakeup_bytes)
		wakeup = bpf_ringbuf_query(&EVENTS, BPF_RB_AVAIL_DATA) >= wakeup_bytes ?
			BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, wakeup);
}

// A transition as the two programs name it: the socket's cookie (never reused) and
// the two states (both below 16).
static __always_inline __u64 handled_key(struct sock *sk, __u32 from, __u32 to)
{
	return (bpf_get_socket_cookie(sk) << 8) | ((from & 0xf) << 4) | (to & 0xf);
}

// The main program. The kernel never runs a tracing program nested on one CPU: a
// transition in a softirq that interrupts this program skips it (the kernel counts it
// in the program's recursion_misses). It first notes each transition it handles, for
// the nested program below.
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	__u32 slot = SLOT_MAIN;
	struct counters *c = bpf_map_lookup_elem(&COUNTERS, &slot);

	if (!c)
		return 0;
	c->handled[c->handled_next & (HANDLED_KEYS - 1)] = handled_key(sk, oldstate, newstate);
	c->handled_next++;
	handle(c, SLOT_MAIN, sk, (__u32)oldstate, (__u32)newstate);
	return 0;
}

// Attached after the main program, so it runs after it for every transition, and
// handles those the main program did not note: the ones the kernel skipped it for,
// whenever in the main program's run the interrupt came. Nothing nests deeper (TCP
// changes state in process and softirq context only). What could still go wrong is
// counted, not hidden: user space takes the main program's recursion_misses less
// `rescued` as lost (a socket that made the same transition twice within the last
// HANDLED_KEYS on the CPU, the second one skipped).
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state_nested, struct sock *sk, int oldstate, int newstate)
{
	__u32 slot = SLOT_MAIN;
	struct counters *main = bpf_map_lookup_elem(&COUNTERS, &slot);
	__u64 key = handled_key(sk, oldstate, newstate);

	if (!main)
		return 0;
	for (int i = 0; i < HANDLED_KEYS; i++)
		if (main->handled[i] == key)
			return 0;
	slot = SLOT_NESTED;
	struct counters *c = bpf_map_lookup_elem(&COUNTERS, &slot);
	if (!c)
		return 0;
	c->rescued++;
	handle(c, SLOT_NESTED, sk, (__u32)oldstate, (__u32)newstate);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
