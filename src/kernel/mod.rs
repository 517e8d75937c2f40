//! The edges: every read from the kernel (netlink sock_diag, /proc, /sys, eBPF) lives
//! here, and nothing here knows about labels, groups or metrics.

#[cfg(feature = "events")]
pub mod events;
pub mod hz;
pub mod kept_file;
pub mod netns;
pub mod owners;
pub mod pods;
pub mod procfs;
pub mod record;
pub mod sockdiag;
pub mod sysctl;
