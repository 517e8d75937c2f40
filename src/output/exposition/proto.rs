//! The Prometheus data model pieces the family builders are made of: a family named once
//! with its help and type, and its members (gauge, counter, histogram).

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// A metric family's name, help and type: the contract, stated once.
#[derive(Clone, Copy, Debug)]
pub struct FamilySpec {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
}

impl FamilySpec {
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::GAUGE,
        }
    }

    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::COUNTER,
        }
    }

    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        FamilySpec {
            name,
            help,
            kind: MetricType::HISTOGRAM,
        }
    }

    /// The family with no members yet.
    pub fn empty(&self) -> MetricFamily {
        family(self.name, self.help, self.kind)
    }

    /// The family with one member per (labels, value): gauges or counters per its type.
    pub fn with_values(
        &self,
        values: impl IntoIterator<Item = (Vec<LabelPair>, f64)>,
    ) -> MetricFamily {
        let mut family = self.empty();
        for (labels, value) in values {
            let member = match self.kind {
                MetricType::COUNTER => counter(labels, value),
                _ => gauge(labels, value),
            };
            family.mut_metric().push(member);
        }
        family
    }

    /// The family with a single member.
    pub fn with_value(&self, labels: Vec<LabelPair>, value: f64) -> MetricFamily {
        self.with_values([(labels, value)])
    }
}

/// A histogram family member, from cumulative bucket counts.
pub fn histogram(
    labels: Vec<LabelPair>,
    bounds: &[f64],
    cumulative: &[u64],
    count: u64,
    sum: f64,
) -> Metric {
    let mut histogram = Histogram::default();
    histogram.set_sample_count(count);
    histogram.set_sample_sum(sum);
    histogram.set_bucket(
        bounds
            .iter()
            .zip(cumulative)
            .map(|(bound, count)| {
                let mut bucket = Bucket::default();
                bucket.set_upper_bound(*bound);
                bucket.set_cumulative_count(*count);
                bucket
            })
            .collect(),
    );
    let mut metric = Metric::from_label(labels);
    metric.set_histogram(histogram);
    metric
}

pub fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family
}

pub fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

pub fn gauge(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_gauge(gauge);
    metric
}

pub fn counter(labels: Vec<LabelPair>, value: f64) -> Metric {
    let mut counter = Counter::default();
    counter.set_value(value);
    let mut metric = Metric::from_label(labels);
    metric.set_counter(counter);
    metric
}
