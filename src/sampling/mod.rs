//! The sampler thread's work: one sample of a namespace through the pipeline, owners
//! attributed, kernel events drained on a thread of their own and fed to the age
//! tracker, rounds over every namespace.

pub mod attribution;
mod connections;
#[cfg(feature = "events")]
pub mod event_drain;
pub mod event_feed;
pub mod late_events;
pub mod namespace_set;
pub mod sample_loop;
pub mod sampler;
