//! The sampler thread's work: one sample of a namespace through the pipeline, owners
//! attributed, kernel events fed to the age tracker, rounds over every namespace.

pub mod attribution;
mod connections;
pub mod event_feed;
pub mod namespace_set;
pub mod sample_loop;
pub mod sampler;
