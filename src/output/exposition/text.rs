//! The text format (0.0.4) written straight into one buffer: the same bytes as
//! `prometheus::TextEncoder`, without its allocations per series (a `String` per value
//! and per family type, a `Cow` per escaped label). At 100 pods that encoder was half
//! of the exposition's CPU (perf: 1.95 % of the daemon's CPU; this writer 0.8 %).
//!
//! Counters, gauges and histograms (what the exporter makes) and summaries are written
//! as the encoder writes them, without timestamps; untyped families (deprecated by the
//! crate, whose encoder panics on them) are left out, so a family added later is never
//! written as something it is not. `same_bytes_as_the_prometheus_encoder` holds it to
//! the encoder's output.

use prometheus::proto::{Metric, MetricFamily, MetricType};

/// Appends `families` to `out`. Families without members are skipped (the encoder
/// refuses them; they have nothing to say), and untyped ones (see `Written`).
pub fn write_families(families: &[MetricFamily], out: &mut Vec<u8>) {
    for family in families.iter().filter(|f| !f.get_metric().is_empty()) {
        let Some(kind) = Written::of(family.get_field_type()) else {
            continue;
        };
        let name = family.name();
        let help = family.help();
        if !help.is_empty() {
            out.extend_from_slice(b"# HELP ");
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            escape(help, false, out);
            out.push(b'\n');
        }
        out.extend_from_slice(b"# TYPE ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(kind.type_line());
        for member in family.get_metric() {
            match kind {
                Written::Counter => {
                    let value = member.get_counter().get_value();
                    sample(out, name, "", member, None, value);
                }
                Written::Gauge => {
                    let value = member.get_gauge().get_value();
                    sample(out, name, "", member, None, value);
                }
                Written::Histogram => histogram(out, name, member),
                Written::Summary => summary(out, name, member),
            }
        }
    }
}

/// The metric types written. Untyped families are not: the crate deprecates `Untyped`
/// (it has no accessor for their values that is not deprecated) and its encoder panics
/// on them.
#[derive(Clone, Copy)]
enum Written {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl Written {
    fn of(kind: MetricType) -> Option<Self> {
        match kind {
            MetricType::COUNTER => Some(Written::Counter),
            MetricType::GAUGE => Some(Written::Gauge),
            MetricType::HISTOGRAM => Some(Written::Histogram),
            MetricType::SUMMARY => Some(Written::Summary),
            MetricType::UNTYPED => None,
        }
    }

    /// The rest of the `# TYPE name` line.
    fn type_line(self) -> &'static [u8] {
        match self {
            Written::Counter => b" counter\n",
            Written::Gauge => b" gauge\n",
            Written::Histogram => b" histogram\n",
            Written::Summary => b" summary\n",
        }
    }
}

/// A summary's quantiles, sum and count.
fn summary(out: &mut Vec<u8>, name: &str, member: &Metric) {
    let summary = member.get_summary();
    for quantile in summary.get_quantile() {
        let label = Some(Extra::Quantile(quantile.quantile()));
        sample(out, name, "", member, label, quantile.value());
    }
    sample(out, name, "_sum", member, None, summary.sample_sum());
    let count = summary.sample_count() as f64;
    sample(out, name, "_count", member, None, count);
}

/// A histogram's cumulative buckets (`+Inf` added unless present), sum and count.
fn histogram(out: &mut Vec<u8>, name: &str, member: &Metric) {
    let histogram = member.get_histogram();
    let count = histogram.get_sample_count() as f64;
    let mut inf_seen = false;
    for bucket in histogram.get_bucket() {
        let bound = bucket.upper_bound();
        let le = Some(Extra::Le(bound));
        sample(
            out,
            name,
            "_bucket",
            member,
            le,
            bucket.cumulative_count() as f64,
        );
        inf_seen |= bound.is_sign_positive() && bound.is_infinite();
    }
    if !inf_seen {
        sample(out, name, "_bucket", member, Some(Extra::LePlusInf), count);
    }
    sample(out, name, "_sum", member, None, histogram.get_sample_sum());
    sample(out, name, "_count", member, None, count);
}

/// The label a sample adds to its member's: a histogram bucket's `le`, a summary's
/// `quantile`.
#[derive(Clone, Copy)]
enum Extra {
    Le(f64),
    /// The bucket the encoder adds when the histogram has no infinite bound.
    LePlusInf,
    Quantile(f64),
}

/// `name{labels,extra} value\n`.
fn sample(
    out: &mut Vec<u8>,
    name: &str,
    suffix: &str,
    member: &Metric,
    extra: Option<Extra>,
    value: f64,
) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    let labels = member.get_label();
    if !labels.is_empty() || extra.is_some() {
        let mut separator = b'{';
        for pair in labels {
            out.push(separator);
            out.extend_from_slice(pair.name().as_bytes());
            out.extend_from_slice(b"=\"");
            escape(pair.value(), true, out);
            out.push(b'"');
            separator = b',';
        }
        if let Some(extra) = extra {
            out.push(separator);
            match extra {
                Extra::Le(bound) => {
                    out.extend_from_slice(b"le=\"");
                    push_value(out, bound);
                }
                Extra::LePlusInf => out.extend_from_slice(b"le=\"+Inf"),
                Extra::Quantile(quantile) => {
                    out.extend_from_slice(b"quantile=\"");
                    push_value(out, quantile);
                }
            }
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.push(b' ');
    push_value(out, value);
    out.push(b'\n');
}

/// A value as Rust prints an f64 (what the encoder writes: `1`, `0.25`, `NaN`, `inf`),
/// integers (most values: counts, bytes) without the float formatter.
fn push_value(out: &mut Vec<u8>, value: f64) {
    /// Below 2^53 every integer is exact in an f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let integral = value.fract() == 0.0 && value.abs() < EXACT;
    // -0.0 prints as "-0", which the integer path would lose.
    if integral && (value != 0.0 || value.is_sign_positive()) {
        out.extend_from_slice(itoa::Buffer::new().format(value as i64).as_bytes());
    } else {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{value}");
    }
}

/// Escapes `\` and newline (and `"` in label values), as the text format asks.
fn escape(text: &str, quotes: bool, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quotes => out.extend_from_slice(b"\\\""),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::exposition::proto::{FamilySpec, family, gauge, histogram, label};
    use prometheus::{Encoder, TextEncoder};

    fn encoder_text(families: &[MetricFamily]) -> String {
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(families, &mut text)
            .expect("encode");
        String::from_utf8(text).expect("utf-8")
    }

    fn written(families: &[MetricFamily]) -> String {
        let mut text = Vec::new();
        write_families(families, &mut text);
        String::from_utf8(text).expect("utf-8")
    }

    /// Values and label texts the encoder has a special way with.
    #[test]
    fn same_bytes_for_awkward_values_and_labels() {
        let values = [
            0.0,
            -0.0,
            1.0,
            -3.0,
            0.25,
            1e-7,
            123456789.5,
            9_007_199_254_740_991.0,
            9_007_199_254_740_993.0,
            1e300,
            f64::MAX,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let spec = FamilySpec::gauge("tcpstate_test", "Help with \\ and \n and \"quotes\".");
        let family = spec.with_values(values.iter().enumerate().map(|(i, v)| {
            let odd = format!("a\\b\"c\nd{i}");
            (
                vec![label("port", &i.to_string()), label("process", &odd)],
                *v,
            )
        }));
        let counter = FamilySpec::counter("tcpstate_test_total", "").with_value(vec![], 7.0);
        let bounds = [0.5, 1.0, f64::INFINITY];
        let with_inf = histogram(vec![label("port", "80")], &bounds, &[1, 2, 3], 3, 1.5);
        let without_inf = histogram(vec![], &[1.0, 60.0], &[0, 4], 5, 99.25);
        let mut histograms = FamilySpec::histogram("tcpstate_test_seconds", "h").empty();
        histograms.mut_metric().extend([with_inf, without_inf]);
        let empty = FamilySpec::gauge("tcpstate_empty", "no members").empty();
        let families = [family, counter, histograms, empty];
        let non_empty = &families[..3];
        assert_eq!(written(&families), encoder_text(non_empty));
    }

    /// Summaries (none made today) as the encoder writes them: a family added later is
    /// not written as a gauge of zeros.
    #[test]
    fn same_bytes_for_a_summary() {
        use prometheus::proto::{Quantile, Summary};
        let quantile = |q: f64, value: f64| {
            let mut quantile = Quantile::default();
            quantile.set_quantile(q);
            quantile.set_value(value);
            quantile
        };
        let member = |labels| {
            let mut summary = Summary::default();
            summary.set_sample_count(5);
            summary.set_sample_sum(15.5);
            summary.set_quantile(vec![quantile(0.5, 3.0), quantile(0.99, 1e-7)]);
            let mut member = Metric::from_label(labels);
            member.set_summary(summary);
            member
        };
        let mut summaries = family("tcpstate_test_seconds", "s \\ \n", MetricType::SUMMARY);
        summaries.set_metric(vec![member(vec![label("port", "80")]), member(vec![])]);
        let families = [summaries];
        assert_eq!(written(&families), encoder_text(&families));
    }

    /// An untyped family (the crate's encoder panics on one) is left out, not written
    /// as a gauge of zeros; the others around it are written.
    #[test]
    fn an_untyped_family_is_left_out() {
        let mut untyped = family("tcpstate_test_untyped", "u", MetricType::UNTYPED);
        untyped.set_metric(vec![gauge(vec![], 1.0)]);
        let gauge = FamilySpec::gauge("tcpstate_test", "g").with_value(vec![], 2.0);
        assert_eq!(written(&[untyped, gauge.clone()]), encoder_text(&[gauge]));
    }

    /// Every family the exporter makes, with the fixture of the exposition tests.
    #[test]
    fn same_bytes_as_the_prometheus_encoder() {
        let families = crate::output::exposition::tests::every_family();
        assert!(families.len() > 20, "the fixture covers the families");
        let non_empty: Vec<MetricFamily> = families
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .cloned()
            .collect();
        assert_eq!(written(&families), encoder_text(&non_empty));
    }
}
