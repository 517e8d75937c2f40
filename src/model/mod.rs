//! Plain data in, plain data out: no I/O, so unit tests feed these stages records
//! without a kernel.

pub mod ages;
pub mod aggregate;
pub mod classify;
pub mod diagnosis;
pub mod durations;
pub mod evidence;
pub mod fds;
pub mod labels;
pub mod sample;
pub mod self_metrics;
pub mod socket_table;
pub mod sockets;
pub mod top;
