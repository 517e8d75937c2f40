// SPDX-License-Identifier: GPL-2.0
// The record socket_fds.bpf.c writes, shared with src/kernel/events/socket_fds.rs:
// change both together.
#ifndef SOCKET_FDS_H
#define SOCKET_FDS_H

#include <linux/types.h>

// One open descriptor: 16 bytes, native byte order.
struct socket_fd {
	__u32 tgid;  // the process (thread group), as in the initial pid namespace
	__u32 fd;
	__u32 inode; // socket inode (what sock_diag reports); 0 when not a socket
	__u32 pad;
};

// One TCP socket held by a descriptor of the process the iterator `held_sockets` was
// attached to: what an exact sock_diag lookup (without tcp_info) reports for it. 32 bytes.
struct held_socket {
	__u64 cookie;     // socket cookie, as sock_diag reports it
	__u32 inode;      // socket inode
	__u32 uid;        // the socket's owner uid (sk_uid)
	__u32 recv_queue; // rcv_nxt - copied_seq, never negative: sock_diag's Recv-Q
	__u32 send_queue; // write_seq - snd_una: sock_diag's Send-Q
	__u8 state;       // kernel TCP state
	__u8 keepalive;   // sock_diag would report the keepalive timer (idiag_timer 2)
	__u16 pad;
	__u32 pad2;
};

#endif
