// SPDX-License-Identifier: GPL-2.0
// The kernel types the programs read, shared by state_change.bpf.c, socket_fds.bpf.c and
// tcp_table.bpf.c. No vmlinux.h: each type is declared with preserve_access_index and
// only the fields some program reads, so every field offset is a CO-RE relocation the
// loader resolves against the running kernel's BTF (a field no program reads costs
// nothing). Flattened: the kernel nests many of these in anonymous unions and structs,
// which CO-RE matching looks through by name.
#ifndef KERNEL_TYPES_H
#define KERNEL_TYPES_H

#include <linux/types.h>

#define IPPROTO_TCP 6

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
	__u64 net_cookie;
} __attribute__((preserve_access_index));

typedef struct {
	struct net *net;
} possible_net_t;

typedef struct {
	__s64 counter;
} atomic64_t;

typedef struct {
	__u32 val;
} kuid_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	possible_net_t skc_net;
	atomic64_t skc_cookie;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct hlist_node {
	struct hlist_node *next, **pprev;
} __attribute__((preserve_access_index));

struct timer_list {
	struct hlist_node entry;
} __attribute__((preserve_access_index));

struct socket;

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
	struct socket *sk_socket;
	struct timer_list sk_timer;
	kuid_t sk_uid;
	unsigned long sk_ino; // Linux 6.17+: the inode, kept in the sock (sock_i_ino reads it)
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

// A socket's inode follows it in one allocation (SOCK_INODE in include/net/sock.h).
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	__u8 icsk_pending;
	struct {
		__u32 lrcvtime;
	} icsk_ack;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 rcv_tstamp;
	__u32 rcv_nxt;
	__u32 copied_seq;
	__u32 write_seq;
	__u32 snd_una;
} __attribute__((preserve_access_index));

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

// inet_connection_sock.icsk_pending values that sock_diag reports before the keepalive
// timer (inet_sk_diag_fill): retransmit, zero-window probe, loss probe, reordering.
#define ICSK_TIME_RETRANS 1
#define ICSK_TIME_PROBE0 3
#define ICSK_TIME_LOSS_PROBE 5
#define ICSK_TIME_REO_TIMEOUT 6

// Whether sock_diag reports the keepalive timer (idiag_timer 2) for a full socket whose
// icsk_pending is `pending` and whose sk_timer is queued (`sk_timer_queued`): only when
// no other timer it reports first is pending.
static __always_inline __u8 keepalive_reported(__u8 pending, int sk_timer_queued)
{
	int other_timer = pending == ICSK_TIME_RETRANS || pending == ICSK_TIME_PROBE0 ||
			  pending == ICSK_TIME_LOSS_PROBE || pending == ICSK_TIME_REO_TIMEOUT;
	return !other_timer && sk_timer_queued;
}

#endif
