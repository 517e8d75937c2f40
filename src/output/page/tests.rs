use std::sync::Arc;

use super::*;
use crate::config::Settings;
use crate::kernel::record::TcpState;
use crate::model::ages::StuckCounts;
use crate::model::aggregate::{GroupKey, GroupStats};
use crate::model::labels::{AgeGroup, OwnerKey, ProcessId};
use crate::model::sample::{NamespaceInfo, NamespaceLabels, Sample};
use crate::output::published::Baseline;

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn sample(groups: u16) -> Sample {
    let mut sample = Sample {
        processes: vec![String::new(), HOSTILE.into(), "api".into()],
        ..Sample::default()
    };
    for port in 0..groups {
        let owner = OwnerKey {
            process: ProcessId(1 + u32::from(port % 2)),
            ..OwnerKey::default()
        };
        let key = GroupKey {
            state: TcpState::CloseWait,
            direction: Direction::Inbound,
            port: PortLabel::Port(8000 + port),
            owner,
        };
        sample.groups.push((
            key,
            GroupStats {
                connections: 4,
                ..GroupStats::default()
            },
        ));
        let group = key.close_wait_group();
        sample.ages.oldest.push((group, 120.0));
        sample.ages.stuck.push((
            group,
            StuckCounts {
                sockets: 4,
                ..StuckCounts::default()
            },
        ));
    }
    sample.state_counts[TcpState::CloseWait.index()] = 4 * u64::from(groups);
    sample
}

fn published(groups: u16) -> Published {
    let samples = vec![NamespaceSample {
        info: NamespaceInfo {
            labels: NamespaceLabels {
                netns: "shop/<web>".into(),
                pod: "web".into(),
                namespace: "shop".into(),
            },
            ..NamespaceInfo::default()
        },
        sample: sample(groups),
    }];
    let settings = Settings {
        namespaces: crate::config::NamespaceMode::All,
        ..Settings::default()
    };
    let mut published = Published::new(&samples, 1_800_000_000.0, &settings);
    published.baseline = Some(Arc::new(Baseline {
        taken_at: 1_800_000_000.0 - 300.0,
        samples,
    }));
    published
}

#[test]
fn verdicts_link_to_the_runbook_and_names_are_escaped() {
    let page = render(&published(2));
    assert!(
        !page.contains(HOSTILE),
        "a process name went into the page raw"
    );
    assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(page.contains("netns shop/&lt;web&gt; <small>pod shop/web</small>"));
    let link = format!("<a href=\"{RUNBOOK_URL}#never-closed\">never closed</a>: 4 of 4");
    assert!(page.contains(&link), "{page}");
    assert!(page.contains("closes watched over the last 5m"));
    assert_eq!(
        page.matches("<tbody class=\"group cause-never-closed\"")
            .count(),
        2
    );
    assert!(
        page.contains("data-query=\"state=close_wait&amp;direction=inbound&amp;port=8000&amp;process=%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E&amp;netns=shop%2F%3Cweb%3E\""),
        "{page}"
    );
}

#[test]
fn every_verdict_has_its_runbook_section_and_the_mixin_agrees_on_the_url() {
    let runbook = include_str!("../../../docs/runbook.md");
    for cause in [
        Cause::NeverClosed,
        Cause::ClosedLate,
        Cause::AcceptBacklog,
        Cause::Undetermined,
    ] {
        let heading = format!("\n### {}\n", cause.name());
        assert!(runbook.contains(&heading), "runbook lacks {heading:?}");
        assert_eq!(runbook_anchor(cause), cause.name().replace(' ', "-"));
    }
    let config = include_str!("../../../deploy/prometheus/mixin/config.libsonnet");
    assert!(config.contains(&format!("runbookURLBase: '{RUNBOOK_URL}'")));
}

#[test]
fn the_page_is_small_and_bounded() {
    let page = render(&published(20));
    assert!(page.len() < 48 * 1024, "{} bytes for 20 groups", page.len());
    let page = render(&published(600));
    assert_eq!(page.matches("<tbody class=\"group").count(), MAX_ROWS);
    assert!(page.contains("100 more groups not shown"));
    assert!(!SCRIPT.contains("</script"));
}

#[test]
fn group_ids_are_stable_and_distinct() {
    let one = render(&published(3));
    let ids = |page: &str| -> Vec<String> {
        page.match_indices(" id=\"g-")
            .map(|(at, _)| page[at + 5..at + 25].to_string())
            .collect()
    };
    let first = ids(&one);
    assert_eq!(first.len(), 3);
    assert_eq!(first, ids(&render(&published(3))));
    let mut unique = first.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    let _ = AgeGroup::folded;
}
