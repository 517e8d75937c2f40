//! What a sample becomes: the Prometheus exposition, encoded once per sample, and the
//! `snapshot` report for a person or a script.

pub mod exposition;
pub mod html;
pub mod page;
pub mod published;
pub mod snapshot;
pub mod sockets;
pub mod terminal;
