//! Command line, spelled like node_exporter's flags. Parsed once by `main`; `config`
//! merges it with the file into `Settings`. Nothing else reads flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tcpstate-exporter",
    disable_version_flag = true,
    about = "Prometheus exporter for TCP sockets stuck in CLOSE_WAIT: which port, which \
             process, how long, and why."
)]
pub struct Cli {
    /// Print the version, git revision, build date and rustc version, and exit.
    #[arg(short = 'V', long)]
    pub version: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take one sample now (or a few, --watch) and print it with a diagnosis.
    Snapshot(Box<SnapshotArgs>),
    /// Validate a configuration file and exit (0 when valid, 2 when not).
    CheckConfig,
}

#[derive(Clone, Debug, Args)]
pub struct SnapshotArgs {
    /// table: for a person; prometheus: the /metrics exposition; json: for scripts.
    #[arg(long, value_enum, default_value_t = SnapshotFormat::Table)]
    pub format: SnapshotFormat,
    /// How many CLOSE_WAIT groups the table shows.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Take this many samples, --sample.interval apart (1s for snapshot unless given),
    /// before printing: ages and closes seen in between become evidence for the
    /// verdicts. 1 takes a single sample.
    #[arg(long, default_value_t = 5, value_name = "SAMPLES")]
    pub watch: u32,
    /// No evidence counts before a CLOSE_WAIT socket is older than this; sockets older
    /// that nothing closes are "never closed".
    #[arg(long, default_value = "10s", value_name = "DURATION")]
    pub stuck_after: String,
    /// Closes taking longer than this on average are "closed late".
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub late_after: String,
    /// Exit with status 3 when a group holds more CLOSE_WAIT connections than this.
    #[arg(long, value_name = "COUNT")]
    pub max_close_wait: Option<u64>,
    /// Exit with status 3 when a CLOSE_WAIT connection is older than this.
    #[arg(long, value_name = "DURATION")]
    pub max_age: Option<String>,
    /// List every group, also those with nothing to report (no CLOSE_WAIT left and no
    /// cause).
    #[arg(long)]
    pub all: bool,
    /// Colour the verdicts: auto (when stdout is a terminal), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Print the sockets behind the groups instead of the verdicts, as `GET
    /// /api/v1/sockets` answers (a table, or its JSON with --format json): addresses,
    /// pid and fd, inode, cookie, queues, age, accept queue. CLOSE_WAIT first, oldest
    /// first.
    #[arg(long)]
    pub sockets: bool,
    /// With --sockets: only sockets in this state (close_wait or a detail state).
    #[arg(long, requires = "sockets", value_name = "STATE")]
    pub state: Option<String>,
    /// With --sockets: only sockets of this group port (local inbound, remote outbound).
    #[arg(long, requires = "sockets", value_name = "PORT")]
    pub port: Option<String>,
    /// With --sockets: only sockets owned by this program (its comm).
    #[arg(long, requires = "sockets", value_name = "NAME")]
    pub process: Option<String>,
    /// With --sockets: only sockets of this network namespace (its netns label).
    #[arg(long, requires = "sockets", value_name = "NETNS")]
    pub netns: Option<String>,
    /// With --sockets: only inbound or outbound sockets.
    #[arg(long, requires = "sockets", value_name = "DIRECTION")]
    pub direction: Option<String>,
    /// With --sockets: only sockets to this peer (an address, or address:port).
    #[arg(long, requires = "sockets", value_name = "PEER")]
    pub peer: Option<String>,
    /// With --sockets: at most this many sockets (default 100, at most 1000).
    #[arg(long, requires = "sockets", value_name = "N")]
    pub limit: Option<String>,
}

impl SnapshotArgs {
    /// The --sockets filters given, as (parameter, value) pairs of the drill-down query.
    pub fn socket_filters(&self) -> Vec<(&'static str, &str)> {
        [
            ("state", &self.state),
            ("port", &self.port),
            ("process", &self.process),
            ("netns", &self.netns),
            ("direction", &self.direction),
            ("peer", &self.peer),
            ("limit", &self.limit),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
        .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SnapshotFormat {
    Table,
    Prometheus,
    Json,
}

/// Flags that override the configuration file. All optional: a flag given wins, else the
/// file's value, else the built-in default.
#[derive(Debug, Default, Args)]
pub struct Flags {
    /// Path to the TOML configuration file.
    #[arg(long = "config.file", global = true, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Address to listen on for the web interface and telemetry [default: :9815].
    #[arg(long = "web.listen-address", global = true, value_name = "ADDR")]
    pub listen_address: Option<String>,
    /// Path under which to expose metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", global = true, value_name = "PATH")]
    pub telemetry_path: Option<String>,
    /// Path to a web configuration file (exporter-toolkit format: TLS, basic auth).
    #[arg(long = "web.config.file", global = true, value_name = "FILE")]
    pub web_config_file: Option<PathBuf>,
    /// How often to sample the kernel's TCP table [default: 15s].
    #[arg(long = "sample.interval", global = true, value_name = "DURATION")]
    pub sample_interval: Option<String>,
    /// Only log messages with the given severity or above: error, warn, info, debug, trace
    /// [default: info].
    #[arg(long = "log.level", global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Output format of log messages: logfmt or json [default: logfmt].
    #[arg(long = "log.format", global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
}
