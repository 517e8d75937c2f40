//! Why the events mode could not start, named for the operator: the exporter logs it
//! (auto) or exits with it (on).

use std::io;

/// A failure to attach, by cause. `reason` gives a bounded label for each.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error(
        "the kernel has no BTF ({path}: {source}); the events mode needs CONFIG_DEBUG_INFO_BTF"
    )]
    NoBtf { path: String, source: io::Error },
    #[error(
        "not permitted to load eBPF programs ({0}); the events mode needs CAP_BPF and \
         CAP_PERFMON (or CAP_SYS_ADMIN)"
    )]
    NotPermitted(String),
    #[error("the kernel has no tracepoint sock:inet_sock_set_state ({0}); it needs Linux 5.5+")]
    TracepointMissing(String),
    #[error("the kernel rejected the eBPF program: {0}")]
    Load(String),
    #[error("cannot attach to sock:inet_sock_set_state: {0}")]
    Attach(String),
    #[error("invalid events configuration: {0}")]
    Config(String),
}

impl EventsError {
    /// Stable, bounded value for a log field or a label.
    pub fn reason(&self) -> &'static str {
        match self {
            EventsError::NoBtf { .. } => "no_btf",
            EventsError::NotPermitted(_) => "not_permitted",
            EventsError::TracepointMissing(_) => "no_tracepoint",
            EventsError::Load(_) => "load",
            EventsError::Attach(_) => "attach",
            EventsError::Config(_) => "config",
        }
    }

    /// Classifies a loader error: a refusal for lack of privilege (EPERM/EACCES anywhere
    /// in the cause chain) is `NotPermitted` whatever step met it; anything else becomes
    /// `otherwise`, with the whole chain as its message.
    pub(crate) fn classify(
        error: &(dyn std::error::Error + 'static),
        otherwise: fn(String) -> EventsError,
    ) -> EventsError {
        let message = chain(error);
        let mut cause = Some(error);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
            {
                return EventsError::NotPermitted(message);
            }
            cause = e.source();
        }
        otherwise(message)
    }
}

/// "outer: inner: innermost", as one line.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = e.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("map error")]
    struct Outer(#[source] io::Error);

    #[test]
    fn a_permission_error_deep_in_the_chain_is_named() {
        let e = Outer(io::Error::from_raw_os_error(libc::EPERM));
        let classified = EventsError::classify(&e, EventsError::Load);
        assert_eq!(classified.reason(), "not_permitted");
        let text = classified.to_string();
        assert!(text.contains("CAP_BPF"), "{text}");
        assert!(text.contains("map error"), "{text}");
    }

    #[test]
    fn other_errors_keep_their_message_and_category() {
        let e = Outer(io::Error::from_raw_os_error(libc::EINVAL));
        let classified = EventsError::classify(&e, EventsError::Load);
        assert_eq!(classified.reason(), "load");
        assert!(classified.to_string().contains("Invalid argument"));
    }
}
