//! What the integration tests (`tests/`) and the benchmark (`tools/bench`) share: one
//! private-network-namespace helper and one small HTTP/1.1 client. Errors are returned
//! as one-line strings; the tests' adapters turn them into panics, the benchmark into
//! its own error report.

pub mod http;
pub mod netns;
