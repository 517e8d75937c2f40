//! The namespaces a sampling round covers: the exporter's own (`namespaces = "own"`), or
//! every network namespace on the host (`"all"`), each with its own sampler.
//!
//! With "all", each round discovers namespaces anew: new ones get a sampler (a netlink
//! socket opened after entering the namespace), vanished ones lose theirs, releasing the
//! socket that would otherwise keep a dead pod's namespace alive. A namespace that
//! vanishes between discovery and its sample is skipped and counted, never an error.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{NamespaceMode, Settings};
use crate::kernel::netns::{self, NamespaceRef, Roots};
use crate::kernel::pods::{PodDirectory, PodIdentity};
use crate::kernel::record::TcpState;
use crate::kernel::sockdiag::DumpError;
use crate::model::sample::{NamespaceInfo, NamespaceLabels, NamespaceSample, Sample};
use crate::model::socket_table::{DumpReason, StateTransition};
use crate::model::sockets::SocketBudget;
use crate::sampling::attribution::Attribution;
use crate::sampling::late_events::LateEvents;
use crate::sampling::sampler::following::EstablishedHash::{SharedFollowable, SharedTooLarge};
pub use crate::sampling::sampler::following::FollowedCounts;
use crate::sampling::sampler::following::{EstablishedHash, FollowedRound};
use crate::sampling::sampler::{SampleReport, Sampler};

/// One round over every namespace.
#[derive(Debug, Default)]
pub struct Round {
    /// The last good sample of every namespace still alive (a namespace whose sample
    /// failed this round keeps its previous one).
    pub samples: Vec<NamespaceSample>,
    pub errors: Vec<DumpError>,
    pub report: SampleReport,
    /// Namespaces that vanished between discovery and their sample.
    pub vanished: u64,
    /// Namespaces whose sample succeeded this round.
    pub sampled: u64,
    /// Quiet namespaces not sampled this round (their last sample is served).
    pub skipped_quiet: u64,
    /// How the namespaces followed by events were read this round.
    pub followed: FollowedCounts,
}

/// A quiet namespace (no connection at its last sample, listeners aside) is sampled only
/// every this many rounds. Each namespace's dump walks the host-wide established hash:
/// measured here, 100 empty namespaces beside a 99k-socket table cost 0.8 s of CPU per
/// round against 0.08 s for one; most pod namespaces are quiet most of the time.
const QUIET_EVERY: u32 = 4;

/// A round's verdict on a namespace on the shared hash that is too large to follow.
const TOO_LARGE: FollowedRound = FollowedRound::Dumped(DumpReason::TooLarge);

struct Member {
    info: NamespaceInfo,
    path: std::path::PathBuf,
    sampler: Sampler,
    last_good: Option<Sample>,
    /// Rounds skipped since the last sample.
    skipped: u32,
}

impl Member {
    /// Samples the namespace (the thread is in it) into `round`; a failed sample keeps
    /// the last good one. A followed namespace may reconcile by period while
    /// `reconcile_left`, and may fetch `late` events.
    fn sample_into(
        &mut self,
        inode: u64,
        attribution: &mut Attribution,
        budget: SocketBudget,
        late: &mut LateEvents,
        reconcile_left: &mut usize,
        round: &mut Round,
    ) {
        if let Some(following) = self.sampler.following_mut() {
            following.may_reconcile = following.due() && *reconcile_left > 0;
            *reconcile_left -= usize::from(following.may_reconcile);
        }
        let early = late.take_for(inode);
        if !early.is_empty() {
            self.sampler.apply_transitions(&early);
        }
        let result = self
            .sampler
            .sample_with_refresh(attribution, budget, &mut || late.fetch_for(inode));
        match result {
            Ok((sample, report)) => {
                if let Some(followed) = report.followed {
                    round.followed.add(followed);
                }
                round.sampled += 1;
                round.report.add(report);
                self.last_good = Some(sample);
            }
            Err(e) => {
                tracing::warn!(netns = %self.info.labels.netns, error = %e,
                    "sample failed; serving the namespace's last good one");
                round.errors.push(e);
            }
        }
    }

    /// The namespace's TCP established hash at its last sample (`None` before any).
    fn established_hash(&self) -> Option<EstablishedHash> {
        let sample = self.last_good.as_ref()?;
        let sockets = sample.state_counts.iter().sum();
        let entries = sample.tcp_settings.ehash_entries;
        Some(EstablishedHash::of(entries, sockets))
    }

    /// Nothing but listeners at the last sample: skip until its turn comes.
    fn quiet(&self) -> bool {
        self.last_good.as_ref().is_some_and(|sample| {
            TcpState::ALL
                .iter()
                .filter(|s| **s != TcpState::Listen)
                .all(|s| sample.state_count(*s) == 0)
        })
    }
}

pub struct NamespaceSet {
    settings: Settings,
    own_inode: u64,
    roots: Roots,
    pods: PodDirectory,
    members: BTreeMap<u64, Member>,
    /// Whether "no permission to enter a namespace" was said (once).
    warned_privileges: bool,
}

impl NamespaceSet {
    /// Opens the own namespace's sampler (both modes sample it: in "all" it is one of
    /// them). Fails only when no netlink socket can be opened at all.
    pub fn new(settings: &Settings) -> std::io::Result<Self> {
        let own_inode = netns::own_inode().unwrap_or(0);
        let mut set = NamespaceSet {
            settings: settings.clone(),
            own_inode,
            roots: Roots::default(),
            pods: PodDirectory::new(&settings.pods_log_dir),
            members: BTreeMap::new(),
            warned_privileges: false,
        };
        let sampler = Sampler::new(settings)?;
        set.members.insert(
            own_inode,
            Member {
                info: NamespaceInfo {
                    inode: own_inode,
                    ..NamespaceInfo::default()
                },
                path: "/proc/thread-self/ns/net".into(),
                sampler,
                last_good: None,
                skipped: 0,
            },
        );
        Ok(set)
    }

    /// Applies reloaded settings: detail states and folding to every sampler; with
    /// "own", the other namespaces are dropped; with "all", the next round discovers.
    pub fn reconfigure(&mut self, settings: &Settings) {
        for member in self.members.values_mut() {
            member.sampler.reconfigure(settings);
        }
        if settings.namespaces == NamespaceMode::Own {
            let own = self.own_inode;
            self.members.retain(|inode, _| *inode == own);
            if let Some(own) = self.members.get_mut(&own) {
                own.info.labels = NamespaceLabels::default();
            }
        }
        self.pods = PodDirectory::new(&settings.pods_log_dir);
        self.settings = settings.clone();
    }

    /// The inodes of the namespaces sampled (the events filter follows them).
    pub fn inodes(&self) -> BTreeSet<u64> {
        self.members.keys().copied().collect()
    }

    /// The namespaces worth following by events between full dumps: those sharing the
    /// host's TCP hash, where each dump walks every socket of the host, and not too
    /// large to follow. The exporter's own namespace is always dumped: its walk is the
    /// one a round cannot avoid.
    pub fn follow_candidates(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|(inode, m)| {
                **inode != self.own_inode && m.established_hash() == Some(SharedFollowable)
            })
            .map(|(inode, _)| *inode)
            .collect()
    }

    /// The namespaces whose every transition the kernel now sends: followed from their
    /// next round on; the others are dumped every round.
    pub fn set_followed(&mut self, followed: &BTreeSet<u64>) {
        let period = self.settings.reconcile_period;
        for (inode, member) in &mut self.members {
            member
                .sampler
                .follow(followed.contains(inode).then_some(period));
        }
    }

    /// Events were lost: every followed namespace dumps at its next round.
    pub fn distrust_events(&mut self) {
        for member in self.members.values_mut() {
            if let Some(following) = member.sampler.following_mut() {
                following.distrust();
            }
        }
    }

    /// Routes kernel events to the namespaces they happened in (by namespace inode);
    /// events of namespaces not sampled are dropped.
    pub fn apply_events(&mut self, events: &[(u64, StateTransition)]) {
        let mut by_namespace: BTreeMap<u64, Vec<StateTransition>> = BTreeMap::new();
        for (inode, event) in events {
            by_namespace.entry(*inode).or_default().push(*event);
        }
        for (inode, events) in by_namespace {
            if let Some(member) = self.members.get_mut(&inode) {
                member.sampler.apply_transitions(&events);
                // Something happened there: a quiet namespace is sampled next round.
                member.skipped = QUIET_EVERY;
            }
        }
    }

    /// Samples every namespace once.
    pub fn sample_round(&mut self, attribution: &mut Attribution) -> Round {
        self.sample_round_with(attribution, &mut Vec::new)
    }

    /// `sample_round`, with `fetch` giving the events queued since the round's own were
    /// applied: a followed namespace whose table looks stale asks for them.
    pub fn sample_round_with(
        &mut self,
        attribution: &mut Attribution,
        fetch: &mut dyn FnMut() -> Vec<(u64, StateTransition)>,
    ) -> Round {
        let mut late = LateEvents::new(fetch);
        let mut round = Round::default();
        attribution.revalidate();
        if self.settings.namespaces == NamespaceMode::All {
            self.rediscover();
        }
        let own_inode = self.own_inode;
        let mut vanished = Vec::new();
        // The per-socket view's room, shared by the namespaces in turn; one that keeps its
        // last sample keeps its sockets, and they count.
        let mut budget = SocketBudget::default();
        // Periodic reconciliations (full dumps of followed namespaces) are spread: one a
        // round at most, so a node's pods, followed from the same moment, do not all
        // walk the host's table in the same round. With more followed namespaces than
        // rounds in a period, each waits its turn: the period stretches to about
        // (followed namespaces x interval), as README says.
        let mut reconcile_left = 1;
        for (inode, member) in &mut self.members {
            if *inode != own_inode && member.quiet() && member.skipped + 1 < QUIET_EVERY {
                member.skipped += 1;
                round.skipped_quiet += 1;
                if let Some(sample) = &member.last_good {
                    budget.spend(&sample.sockets);
                }
                continue;
            }
            member.skipped = 0;
            let entered = if *inode == own_inode {
                None
            } else {
                match netns::enter(&member.path) {
                    Ok(entered) => Some(entered),
                    Err(e) => {
                        tracing::debug!(netns = %member.info.labels.netns, error = %e,
                            "namespace vanished before its sample");
                        vanished.push(*inode);
                        continue;
                    }
                }
            };
            member.sample_into(
                *inode,
                attribution,
                budget,
                &mut late,
                &mut reconcile_left,
                &mut round,
            );
            drop(entered);
            if *inode != own_inode && member.established_hash() == Some(SharedTooLarge) {
                round.followed.add(TOO_LARGE);
            }
            if let Some(sample) = &member.last_good {
                budget.spend(&sample.sockets);
            }
        }
        round.vanished = vanished.len() as u64;
        for inode in vanished {
            self.members.remove(&inode);
        }
        // Fetched for a later namespace, of one already sampled: in order, before the
        // next round's.
        self.apply_events(&late.leftover());
        round.samples = self
            .members
            .values()
            .filter_map(|m| {
                m.last_good.as_ref().map(|sample| NamespaceSample {
                    info: m.info.clone(),
                    sample: sample.clone(),
                })
            })
            .collect();
        round
    }

    /// Updates membership from discovery: samplers for new namespaces, none for gone ones.
    fn rediscover(&mut self) {
        self.pods.refresh();
        let found = netns::discover(&self.roots);
        let init_inode = std::fs::metadata("/proc/1/ns/net")
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .ok();
        let mut alive = std::collections::HashSet::new();
        for namespace in found {
            let info = self.describe(&namespace, init_inode);
            if !self.settings.namespace_wanted(&info.labels.netns) {
                continue;
            }
            alive.insert(namespace.inode);
            if let Some(member) = self.members.get_mut(&namespace.inode) {
                member.path = namespace.path.clone();
                member.info = info;
                continue;
            }
            match open_sampler(&namespace, &self.settings) {
                Ok(sampler) => {
                    tracing::info!(netns = %info.labels.netns, "sampling a new network namespace");
                    self.members.insert(
                        namespace.inode,
                        Member {
                            info,
                            path: namespace.path.clone(),
                            sampler,
                            last_good: None,
                            skipped: 0,
                        },
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    if !self.warned_privileges {
                        self.warned_privileges = true;
                        tracing::warn!(netns = %info.labels.netns, error = %e,
                            "namespaces = \"all\" cannot enter other network namespaces: only \
                             those it may enter are sampled (grant CAP_SYS_ADMIN and \
                             CAP_SYS_PTRACE)");
                    }
                }
                Err(e) => {
                    tracing::debug!(netns = %info.labels.netns, error = %e,
                        "cannot open a sock_diag socket in the namespace");
                }
            }
        }
        let gone: Vec<u64> = self
            .members
            .keys()
            .filter(|inode| !alive.contains(inode))
            .copied()
            .collect();
        for inode in gone {
            if let Some(member) = self.members.remove(&inode) {
                tracing::info!(netns = %member.info.labels.netns, "network namespace gone");
            }
        }
    }

    fn describe(&mut self, namespace: &NamespaceRef, init_inode: Option<u64>) -> NamespaceInfo {
        let pod = namespace
            .pid
            .and_then(|pid| self.pods.identify(&self.roots.proc, namespace.inode, pid))
            .unwrap_or_default();
        let netns = namespace_label(namespace, init_inode, &pod);
        NamespaceInfo {
            labels: NamespaceLabels {
                netns,
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
            },
            inode: namespace.inode,
            pid: namespace.pid,
            comm: namespace.comm.clone().unwrap_or_default(),
            pod_uid: pod.uid,
            container_id: pod.container_id,
        }
    }
}

/// The `netns` label: the `ip netns` name; `host` for the init namespace; the pod as
/// `namespace/name` on Kubernetes; else `ns-<inode>`, stable for the namespace's life.
fn namespace_label(namespace: &NamespaceRef, init_inode: Option<u64>, pod: &PodIdentity) -> String {
    if let Some(name) = &namespace.name {
        return name.clone();
    }
    if Some(namespace.inode) == init_inode {
        return "host".into();
    }
    if !pod.name.is_empty() {
        return format!("{}/{}", pod.namespace, pod.name);
    }
    format!("ns-{}", namespace.inode)
}

/// A sampler whose netlink socket lives in `namespace`: opened after entering it, on
/// this (the sampling) thread, which then returns to its own namespace.
fn open_sampler(namespace: &NamespaceRef, settings: &Settings) -> std::io::Result<Sampler> {
    let entered = netns::enter(&namespace.path)?;
    let sampler = Sampler::new_entered(settings);
    drop(entered);
    sampler
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing sample keeps the namespace's last good one served, and reports the
    /// error; the next good sample replaces it.
    #[test]
    fn a_failed_sample_keeps_the_last_good_one() {
        let settings = Settings::default();
        let mut set = NamespaceSet::new(&settings).expect("netlink");
        let mut attribution = Attribution::new(&settings);
        let good = set.sample_round(&mut attribution);
        assert!(good.errors.is_empty());
        assert_eq!(good.samples.len(), 1);
        let good_counts = good.samples[0].sample.state_counts;

        for error in [
            DumpError::Overrun,
            DumpError::Interrupted,
            DumpError::Decode("truncated attribute".into()),
        ] {
            let reason = error.reason();
            let own = set.members.values_mut().next().expect("own namespace");
            own.sampler.inject_failure(error);
            let failed = set.sample_round(&mut attribution);
            assert_eq!(failed.errors.len(), 1, "{}", reason.name());
            assert_eq!(failed.errors[0].reason(), reason);
            assert_eq!(failed.sampled, 0);
            assert_eq!(
                failed.samples.len(),
                1,
                "the last good sample is still served"
            );
            assert_eq!(failed.samples[0].sample.state_counts, good_counts);
        }
        let again = set.sample_round(&mut attribution);
        assert!(again.errors.is_empty());
        assert_eq!(again.sampled, 1);
    }

    fn reference(name: Option<&str>, inode: u64) -> NamespaceRef {
        NamespaceRef {
            inode,
            name: name.map(str::to_string),
            path: "/proc/1/ns/net".into(),
            pid: Some(1),
            comm: Some("init".into()),
        }
    }

    #[test]
    fn labels_prefer_names_then_host_then_pods_then_inode() {
        let none = PodIdentity::default();
        let pod = PodIdentity {
            namespace: "shop".into(),
            name: "cart-1".into(),
            ..PodIdentity::default()
        };
        assert_eq!(
            namespace_label(&reference(Some("blue"), 5), Some(5), &pod),
            "blue"
        );
        assert_eq!(namespace_label(&reference(None, 5), Some(5), &none), "host");
        assert_eq!(
            namespace_label(&reference(None, 6), Some(5), &pod),
            "shop/cart-1"
        );
        assert_eq!(namespace_label(&reference(None, 6), Some(5), &none), "ns-6");
    }
}
