//! The HTTP side: serves the last encoded exposition, never samples itself; TLS and
//! basic auth from an exporter-toolkit web config.

pub mod api;
pub mod auth;
pub mod listen;
pub mod server;
pub mod slots;
pub mod tls;
pub mod webconfig;
