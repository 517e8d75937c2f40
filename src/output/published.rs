//! What the sampler thread hands the HTTP side each round besides the encoded
//! exposition: the round's samples (their per-socket views included), for the drill-down
//! and the live page. Swapped in whole, read without a lock; no request ever samples.

use crate::config::Settings;
use crate::kernel::record::TcpState;
use crate::model::sample::NamespaceSample;

/// The last round, as published.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// Unix time of the round (0 before the first).
    pub taken_at: f64,
    pub samples: Vec<NamespaceSample>,
    /// The states whose sockets the per-socket view keeps: CLOSE_WAIT and the detail
    /// states of the round's settings.
    pub kept_states: Vec<TcpState>,
    /// Whether namespaces are labelled (`namespaces = "all"`).
    pub namespace_labels: bool,
}

impl Published {
    pub fn new(samples: &[NamespaceSample], taken_at: f64, settings: &Settings) -> Self {
        Published {
            taken_at,
            samples: samples.to_vec(),
            kept_states: kept_states(settings),
            namespace_labels: settings.namespaces == crate::config::NamespaceMode::All,
        }
    }
}

/// CLOSE_WAIT and the detail states, in kernel order.
pub fn kept_states(settings: &Settings) -> Vec<TcpState> {
    TcpState::ALL
        .into_iter()
        .filter(|s| *s == TcpState::CloseWait || settings.detail_states.contains(s))
        .collect()
}
