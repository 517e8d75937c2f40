//! What `--version` prints, in node_exporter's layout; build.rs supplies the facts.

/// The package version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built from, or `unknown` outside a checkout.
pub const REVISION: &str = env!("TCPSTATE_REVISION");
/// When build.rs ran (or `SOURCE_DATE_EPOCH`), RFC 3339 UTC.
pub const BUILD_DATE: &str = env!("TCPSTATE_BUILD_DATE");
/// `rustc -V` of the compiler that built this binary.
pub const RUSTC: &str = env!("TCPSTATE_RUSTC");

/// The `--version` text, ending with a newline:
///
/// ```text
/// tcpstate-exporter, version 0.1.0 (revision: 3f2a...)
///   build date:       2026-12-01T21:39:53Z
///   rustc version:    rustc 1.95.0 (59807616e 2026-04-14)
///   platform:         linux/x86_64
///   features:         events
/// ```
pub fn long_version() -> String {
    let features = if cfg!(feature = "events") {
        "events"
    } else {
        "none"
    };
    format!(
        "tcpstate-exporter, version {VERSION} (revision: {REVISION})\n  \
         build date:       {BUILD_DATE}\n  \
         rustc version:    {RUSTC}\n  \
         platform:         {}/{}\n  \
         features:         {features}\n",
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}
