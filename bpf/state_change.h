// SPDX-License-Identifier: GPL-2.0
// Records shared by the BPF program and user space (src/kernel/events/abi.rs mirrors them:
// change both together; the Rust side asserts the sizes).
#ifndef STATE_CHANGE_H
#define STATE_CHANGE_H

// TCP states are 1 (ESTABLISHED) ..= 12 (NEW_SYN_RECV); index 0 is unused.
#define TCP_STATE_SLOTS 13
#define AF_INET6_VALUE 10

// NETNS_FILTER values (mirrored in src/kernel/events/abi.rs).
#define NETNS_SAMPLED 1
#define NETNS_EVERY_TRANSITION 2

// One state change, as sent through the ring buffer. 72 bytes.
struct state_change {
	__u64 timestamp_ns;  // bpf_ktime_get_ns: CLOCK_MONOTONIC
	__u64 cookie;        // socket cookie, as sock_diag reports it
	__u64 netns_cookie;  // never reused, unlike the inode number
	__u32 netns_inum;    // inode of /proc/PID/ns/net
	__u16 family;        // AF_INET or AF_INET6
	__u16 local_port;    // host byte order
	__u16 remote_port;   // host byte order
	__u8 old_state;
	__u8 new_state;
	__u32 bound_dev_if;  // the device the socket is bound to (0: none): sock_diag lookups need it
	__u8 local_addr[16]; // IPv4: first 4 bytes, network order
	__u8 remote_addr[16];
};

// Transitions the main program remembers for the nested one (a power of two).
#define HANDLED_KEYS 16

// Per-CPU counters; user space sums the CPUs.
struct counters {
	__u64 transitions[TCP_STATE_SLOTS][TCP_STATE_SLOTS];
	__u64 lost;           // events not sent: ring buffer full
	__u64 netns_overflow; // transitions not counted per namespace: map full
	__u64 unknown_states; // state numbers beyond TCP_STATE_SLOTS (not counted)
	__u64 filtered;       // transitions of namespaces outside NETNS_FILTER (not counted)
	__u64 rescued;        // slot 1 only: transitions the nested program handled
	// Slot 0 only: the last HANDLED_KEYS transitions the main program began on this CPU
	// (see handled_key), a ring at handled_next.
	__u64 handled[HANDLED_KEYS];
	__u64 handled_next;
};

// COUNTERS slots and netns_transition.slot: what the main program counted, and what the
// nested program counted for it (kept apart: a program interrupted in the middle of an
// increment would otherwise overwrite the nested one's).
#define SLOT_MAIN 0
#define SLOT_NESTED 1

struct netns_transition {
	__u32 netns_inum;
	__u8 from;
	__u8 to;
	__u16 slot; // SLOT_MAIN or SLOT_NESTED
};

#endif
