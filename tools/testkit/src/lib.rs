//! What the integration tests (`tests/`) and the benchmark (`tools/bench`) share: one
//! private-network-namespace helper, one small HTTP/1.1 client, and one way to make the
//! host busy (connection churn, CPU hogs; also the `tcpstate-churn` binary). Errors are returned
//! as one-line strings; the tests' adapters turn them into panics, the benchmark into
//! its own error report.

pub mod churn;
pub mod http;
pub mod netns;
