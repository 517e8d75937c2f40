// SPDX-License-Identifier: GPL-2.0
// The record tcp_table.bpf.c writes, shared with src/kernel/events/tcp_table.rs: change
// both together.
#ifndef TCP_TABLE_H
#define TCP_TABLE_H

#include <linux/types.h>

// One TCP socket of the reading thread's network namespace: what a sock_diag dump
// without extensions reports for it (inet_sk_diag_fill, tcp_diag_get_info), and for
// CLOSE_WAIT the two tcp_info ages the exporter dates it by, in jiffies. 80 bytes,
// native byte order but for `remote_port` (network order, as the kernel keeps it).
struct tcp_table_socket {
	__u64 cookie;           // socket cookie (generated on first use, as sock_diag does)
	__u8 local_addr[16];    // IPv4: the first 4 bytes
	__u8 remote_addr[16];
	__u32 inode;            // socket inode; 0 for time-wait, request and orphan sockets
	__u32 uid;              // owner uid (a request socket: its listener's)
	__u32 recv_queue;       // listener: accept queue; else rcv_nxt - copied_seq, >= 0
	__u32 send_queue;       // listener: backlog; else write_seq - snd_una
	__u32 bound_dev_if;     // SO_BINDTODEVICE / VRF / link-local scope; 0: none
	__u16 local_port;       // host order
	__u16 remote_port;      // network order
	__u8 family;            // AF_INET or AF_INET6
	__u8 state;             // kernel TCP state (12: request socket)
	__u8 keepalive;         // sock_diag would report the keepalive timer (idiag_timer 2)
	__u8 pad;
	// CLOSE_WAIT only (else 0): jiffies since the last ACK (the peer's FIN included)
	// and since the last data were received: tcp_info's last_ack_recv and
	// last_data_recv before jiffies_to_msecs, which needs the kernel's HZ.
	__u32 ack_age_jiffies;
	__u32 data_age_jiffies;
	__u32 pad2;
};

#endif
