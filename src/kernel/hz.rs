//! The kernel's tick rate (CONFIG_HZ), from its build configuration: what converts the
//! jiffies a BPF program reads into the milliseconds tcp_info reports
//! (`jiffies_to_msecs`). Nothing at run time tells it reliably (USER_HZ, what
//! `getconf CLK_TCK` says, is 100 whatever HZ is), so where neither configuration file
//! is readable the caller does without.

use std::io::Read;

/// `/boot/config-RELEASE` (Debian, Fedora, Ubuntu install it), else `/proc/config.gz`
/// (CONFIG_IKCONFIG_PROC). `None` when neither is readable or names no HZ.
pub fn kernel_hz() -> Option<u32> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let boot = format!("/boot/config-{}", release.trim());
    if let Some(hz) = std::fs::read_to_string(boot).ok().and_then(|t| parse(&t)) {
        return Some(hz);
    }
    let gz = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .ok()?;
    parse(&text)
}

/// The value of `CONFIG_HZ=` in a kernel configuration.
fn parse(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|line| line.strip_prefix("CONFIG_HZ="))
        .and_then(|value| value.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

/// Milliseconds in `jiffies` ticks at `hz`, rounded up as the kernel's
/// `jiffies_to_msecs` rounds them (exact when HZ divides 1000).
pub fn jiffies_to_ms(jiffies: u32, hz: u32) -> u32 {
    let ms = (u64::from(jiffies) * 1000).div_ceil(u64::from(hz.max(1)));
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hz_from_a_configuration() {
        let config =
            "# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\nCONFIG_HZ_PERIODIC=y\n";
        assert_eq!(parse(config), Some(250));
        assert_eq!(parse("CONFIG_HZ_1000=y\n"), None);
        assert_eq!(parse("CONFIG_HZ=zero\n"), None);
    }

    #[test]
    fn converts_as_jiffies_to_msecs() {
        assert_eq!(jiffies_to_ms(3, 250), 12);
        assert_eq!(jiffies_to_ms(3, 1000), 3);
        assert_eq!(jiffies_to_ms(1, 300), 4); // 3.33 ms, rounded up
        assert_eq!(jiffies_to_ms(u32::MAX, 100), u32::MAX);
    }

    /// This machine's kernel names its HZ (Debian ships /boot/config-*, this one has
    /// /proc/config.gz); a host where neither exists falls back to tcp_info lookups.
    #[test]
    fn this_kernel_names_its_hz() {
        let hz = kernel_hz().expect("a kernel configuration with CONFIG_HZ");
        assert!([100, 250, 300, 1000].contains(&hz), "HZ {hz}");
    }
}
