//! The sysctls the sampler needs, read from /proc/sys of the calling thread's network
//! namespace (procfs resolves `net.*` by the reader's namespace).

use std::io;
use std::ops::RangeInclusive;

/// The kernel's default, used when the file cannot be read.
pub const DEFAULT_EPHEMERAL_RANGE: RangeInclusive<u16> = 32768..=60999;

const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// `net.ipv4.ip_local_port_range`, which bounds ephemeral ports for IPv6 too.
pub fn ephemeral_port_range() -> io::Result<RangeInclusive<u16>> {
    let text = std::fs::read_to_string(LOCAL_PORT_RANGE)?;
    parse_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{LOCAL_PORT_RANGE}: unexpected content {:?}", text.trim()),
        )
    })
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    (fields.next().is_none() && low <= high).then_some(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_tab_separated_pair() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(32768..=60999));
        assert_eq!(parse_port_range("1024 65535"), Some(1024..=65535));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1024"), None);
        assert_eq!(parse_port_range("a b"), None);
    }

    #[test]
    fn reads_this_hosts_range() {
        let range = ephemeral_port_range().expect("procfs is mounted");
        assert!(range.start() <= range.end());
    }
}
