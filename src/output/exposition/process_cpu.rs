//! `process_cpu_seconds_total` to the microsecond. prometheus 0.14's process collector
//! divides /proc/self/stat's ticks by CLK_TCK in integers, so the counter moves in whole
//! seconds: for a daemon using 1-2 % of a CPU, one step every minute or two, and
//! `rate(process_cpu_seconds_total[5m])` (how node_exporter users watch an exporter's
//! cost; Go's client reports fractions) swings between 0 and twice the truth.
//! getrusage(2) gives the same user + system time for the whole process, in microseconds.

use prometheus::proto::{Counter, MetricFamily};

const FAMILY: &str = "process_cpu_seconds_total";

/// User + system CPU time of this process (every thread), in seconds; `None` if the
/// kernel refuses (it does not for RUSAGE_SELF).
pub fn process_cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF needs no privilege.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed, then filled by a successful getrusage.
    let usage = unsafe { usage.assume_init() };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

/// Sets the `process_cpu_seconds_total` counter among `families` (the process
/// collector's) to the precise figure; leaves it as it is if getrusage fails.
pub fn refine(families: &mut [MetricFamily]) {
    let Some(seconds) = process_cpu_seconds() else {
        return;
    };
    for family in families.iter_mut().filter(|f| f.name() == FAMILY) {
        for metric in family.mut_metric().iter_mut() {
            let mut counter = Counter::default();
            counter.set_value(seconds);
            metric.set_counter(counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    /// The collector's own figure would still be 0 after a tenth of a second of CPU; the
    /// refined one lies between getrusage before and after the collection.
    #[test]
    fn the_cpu_counter_has_the_fractions_of_a_second() {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        let mut spin = 0u64;
        while process_cpu_seconds().is_some_and(|s| s < 0.1) {
            spin = std::hint::black_box(spin.wrapping_add(1));
        }
        let before = process_cpu_seconds().expect("getrusage");
        let mut families = collector.collect();
        refine(&mut families);
        let after = process_cpu_seconds().expect("getrusage");
        let family = families
            .iter()
            .find(|f| f.name() == FAMILY)
            .expect("the collector makes the family");
        let value = family.get_metric()[0].get_counter().get_value();
        assert!(
            (before..=after).contains(&value),
            "{value} not within [{before}, {after}]"
        );
    }
}
