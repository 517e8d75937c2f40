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

#endif
