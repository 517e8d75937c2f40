//! Label sets of a namespace's series, typed by what they label: one place decides the
//! label names and their order (namespace prefix, then the key, then the owner).

use prometheus::proto::LabelPair;

use crate::kernel::record::TcpState;
use crate::model::aggregate::{GroupKey, ListenerKey};
use crate::model::labels::{AgeGroup, OwnerKey};
use crate::model::sample::{NamespaceInfo, Sample};
use crate::output::exposition::proto::label;

/// Label names of per-group series; `pid` only when configured.
#[derive(Clone, Copy, Debug)]
pub struct LabelOptions {
    pub pid_label: bool,
    /// Add `netns`, `pod` and `namespace` to every series ("all" namespaces mode).
    pub namespace_labels: bool,
    /// Peer series per outbound CLOSE_WAIT group (`close_wait.peers_per_group`; 0: none).
    pub peers_per_group: usize,
}

/// Labels the series of one namespace's sample.
pub struct SeriesLabels<'a> {
    pub sample: &'a Sample,
    pub options: LabelOptions,
    /// `netns`, `pod`, `namespace` with `namespace_labels`; else empty.
    pub prefix: &'a [LabelPair],
}

impl SeriesLabels<'_> {
    /// A series of the namespace as a whole.
    pub fn namespace(&self) -> Vec<LabelPair> {
        self.prefix.to_vec()
    }

    /// A per-state series.
    pub fn state(&self, state: TcpState) -> Vec<LabelPair> {
        self.with(&[("state", state.name())])
    }

    /// A connection group: state, direction, port, owner.
    pub fn group(&self, key: &GroupKey) -> Vec<LabelPair> {
        let port = key.port.to_string();
        let mut labels = self.with(&[
            ("state", key.state.name()),
            ("direction", key.direction.name()),
            ("port", &port),
        ]);
        self.push_owner(&mut labels, key.owner);
        labels
    }

    /// A CLOSE_WAIT group: direction, port, owner.
    pub fn close_wait(&self, group: &AgeGroup) -> Vec<LabelPair> {
        let port = group.port.to_string();
        let mut labels = self.with(&[("direction", group.direction.name()), ("port", &port)]);
        self.push_owner(&mut labels, group.owner);
        labels
    }

    /// A peer of a CLOSE_WAIT group: direction, port, owner, peer.
    pub fn peer(&self, group: &AgeGroup, peer: &str) -> Vec<LabelPair> {
        let mut labels = self.close_wait(group);
        labels.push(label("peer", peer));
        labels
    }

    /// The listeners of a port: port, owner.
    pub fn listener(&self, key: &ListenerKey) -> Vec<LabelPair> {
        let mut labels = self.with(&[("port", &key.port.to_string())]);
        self.push_owner(&mut labels, key.owner);
        labels
    }

    /// A program: its owner labels alone.
    pub fn process(&self, owner: OwnerKey) -> Vec<LabelPair> {
        let mut labels = self.with(&[]);
        self.push_owner(&mut labels, owner);
        labels
    }

    fn with(&self, pairs: &[(&str, &str)]) -> Vec<LabelPair> {
        let mut labels = Vec::with_capacity(self.prefix.len() + pairs.len() + 3);
        labels.extend_from_slice(self.prefix);
        labels.extend(pairs.iter().map(|(name, value)| label(name, value)));
        labels
    }

    /// `process`, then `container` (namespaces mode) and `pid` (when configured).
    fn push_owner(&self, labels: &mut Vec<LabelPair>, owner: OwnerKey) {
        labels.push(label("process", self.sample.process_name(owner.process)));
        if self.options.namespace_labels {
            labels.push(label(
                "container",
                self.sample.process_name(owner.container),
            ));
        }
        if self.options.pid_label {
            let pid = if owner.pid == 0 {
                String::new()
            } else {
                owner.pid.to_string()
            };
            labels.push(label("pid", &pid));
        }
    }
}

/// `netns`, `pod` and `namespace`: the prefix of every series in namespaces mode.
pub fn namespace_prefix(info: &NamespaceInfo) -> Vec<LabelPair> {
    vec![
        label("netns", &info.labels.netns),
        label("pod", &info.labels.pod),
        label("namespace", &info.labels.namespace),
    ]
}

/// The labels of `tcpstate_netns_info`: the prefix, then what is known of the namespace.
pub fn namespace_info(info: &NamespaceInfo) -> Vec<LabelPair> {
    let mut labels = namespace_prefix(info);
    let pid = info.pid.map(|p| p.to_string()).unwrap_or_default();
    labels.extend([
        label("inode", &info.inode.to_string()),
        label("pid", &pid),
        label("comm", &info.comm),
        label("pod_uid", &info.pod_uid),
        label("container_id", &info.container_id),
    ]);
    labels
}
