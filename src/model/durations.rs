//! What the CLOSE_WAIT tracker keeps per group since start: the histogram of times spent
//! in CLOSE_WAIT and the count of entries. These are counters, so a group's series, once
//! made, stays; the number of series is bounded by `max_groups`, the fold buckets counted
//! in.

use std::collections::BTreeMap;

use crate::model::labels::{AgeGroup, Direction};

/// A cumulative histogram of seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct DurationHistogram {
    /// Cumulative counts per bound of `CloseWaitTracker::bounds`.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl DurationHistogram {
    pub fn new(buckets: usize) -> Self {
        DurationHistogram {
            cumulative: vec![0; buckets],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, bounds: &[f64], seconds: f64) {
        for (bound, count) in bounds.iter().zip(self.cumulative.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Per-group values since start, at most `max_groups` series: a group gets a series of
/// its own while there is room beside the fold buckets (one per direction), else it
/// shares its fold bucket's.
#[derive(Clone, Debug)]
pub struct BoundedSeries<V> {
    series: BTreeMap<AgeGroup, V>,
    max_groups: usize,
}

impl<V> BoundedSeries<V> {
    pub fn new(max_groups: usize) -> Self {
        BoundedSeries {
            series: BTreeMap::new(),
            max_groups,
        }
    }

    /// The value of `group`'s series, or of its fold bucket's when it has none and no
    /// room is left; made with `new` when absent.
    pub fn entry(&mut self, group: AgeGroup, new: impl FnOnce() -> V) -> &mut V {
        let group = self.bounded(group);
        self.series.entry(group).or_insert_with(new)
    }

    fn bounded(&self, group: AgeGroup) -> AgeGroup {
        if self.series.contains_key(&group) {
            return group;
        }
        let buckets = [Direction::Inbound, Direction::Outbound]
            .into_iter()
            .filter(|direction| {
                let bucket = AgeGroup {
                    direction: *direction,
                    ..group
                };
                self.series.contains_key(&bucket.folded())
            })
            .count();
        if self.series.len() - buckets < self.max_groups.saturating_sub(2) {
            group
        } else {
            group.folded()
        }
    }

    /// Every series, in group order.
    pub fn iter(&self) -> impl Iterator<Item = (&AgeGroup, &V)> {
        self.series.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::labels::{OwnerKey, PortLabel};

    fn group(direction: Direction, port: u16) -> AgeGroup {
        AgeGroup {
            direction,
            port: PortLabel::Port(port),
            owner: OwnerKey::default(),
        }
    }

    #[test]
    fn series_are_bounded_by_max_groups_buckets_included() {
        let mut series = BoundedSeries::new(3);
        for (direction, port) in [
            (Direction::Inbound, 80),
            (Direction::Inbound, 81),
            (Direction::Inbound, 82),
            (Direction::Outbound, 83),
        ] {
            *series.entry(group(direction, port), || 0) += 1;
        }
        *series.entry(group(Direction::Inbound, 80), || 0) += 1;
        let got: Vec<(Direction, PortLabel, bool, u64)> = series
            .iter()
            .map(|(g, n)| (g.direction, g.port, g.is_folded(), *n))
            .collect();
        assert_eq!(
            got,
            vec![
                (Direction::Inbound, PortLabel::Port(80), false, 2),
                (Direction::Inbound, PortLabel::Other, true, 2),
                (Direction::Outbound, PortLabel::Other, true, 1),
            ],
            "one own series and a bucket per direction: 3 at most"
        );
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut histogram = DurationHistogram::new(3);
        histogram.observe(&[1.0, 10.0, 100.0], 5.0);
        histogram.observe(&[1.0, 10.0, 100.0], 0.5);
        assert_eq!(histogram.cumulative, vec![1, 2, 2]);
        assert_eq!(histogram.count, 2);
        assert_eq!(histogram.sum, 5.5);
    }
}
