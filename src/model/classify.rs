//! Direction and port of a connection: the label pair that makes per-port metrics useful
//! without ever carrying an ephemeral port (which would explode cardinality).

use std::ops::RangeInclusive;

use crate::model::labels::Direction;

/// The set of local ports with a listener in the namespace, as a 64 Ki-bit set (8 KiB):
/// a lookup per socket must cost a bit test, not a hash.
#[derive(Clone)]
pub struct ListeningPorts {
    bits: Box<[u64; 1024]>,
}

impl Default for ListeningPorts {
    fn default() -> Self {
        ListeningPorts {
            bits: Box::new([0; 1024]),
        }
    }
}

impl ListeningPorts {
    pub fn insert(&mut self, port: u16) {
        self.bits[usize::from(port >> 6)] |= 1 << (port & 63);
    }

    pub fn contains(&self, port: u16) -> bool {
        self.bits[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    pub fn clear(&mut self) {
        self.bits.fill(0);
    }
}

/// Classifies connections of one namespace.
pub struct Classifier<'a> {
    pub listening: &'a ListeningPorts,
    /// `net.ipv4.ip_local_port_range` (shared by IPv6).
    pub ephemeral: RangeInclusive<u16>,
}

impl Classifier<'_> {
    /// - inbound on the local port when that port has a listener (accept-queue children
    ///   and accepted connections alike);
    /// - inbound on the local port too when no listener is left but the local port is
    ///   outside the ephemeral range and the remote one inside it (a server that closed
    ///   its listener, or a program that hands over accepted sockets);
    /// - otherwise outbound on the remote port.
    pub fn classify(&self, local_port: u16, remote_port: u16) -> (Direction, u16) {
        if self.listening.contains(local_port)
            || (!self.ephemeral.contains(&local_port) && self.ephemeral.contains(&remote_port))
        {
            (Direction::Inbound, local_port)
        } else {
            (Direction::Outbound, remote_port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier(listening: &ListeningPorts) -> Classifier<'_> {
        Classifier {
            listening,
            ephemeral: 32768..=60999,
        }
    }

    #[test]
    fn connection_to_a_listening_port_is_inbound_on_that_port() {
        let mut listening = ListeningPorts::default();
        listening.insert(8080);
        let c = classifier(&listening);
        assert_eq!(c.classify(8080, 45000), (Direction::Inbound, 8080));
        // Even a listener inside the ephemeral range wins.
        listening.insert(40000);
        let c = classifier(&listening);
        assert_eq!(c.classify(40000, 45000), (Direction::Inbound, 40000));
    }

    #[test]
    fn without_listener_a_service_port_facing_an_ephemeral_one_is_inbound() {
        let listening = ListeningPorts::default();
        let c = classifier(&listening);
        assert_eq!(c.classify(443, 51000), (Direction::Inbound, 443));
    }

    #[test]
    fn a_client_connection_is_outbound_on_the_remote_port() {
        let listening = ListeningPorts::default();
        let c = classifier(&listening);
        assert_eq!(c.classify(51000, 443), (Direction::Outbound, 443));
        // Both outside the range (e.g. a bound client port): outbound, remote port.
        assert_eq!(c.classify(1000, 5432), (Direction::Outbound, 5432));
        // Both ephemeral with no listener: outbound on the remote port.
        assert_eq!(c.classify(50000, 40000), (Direction::Outbound, 40000));
    }

    #[test]
    fn range_edges_are_inclusive() {
        let listening = ListeningPorts::default();
        let c = classifier(&listening);
        assert_eq!(c.classify(32767, 32768), (Direction::Inbound, 32767));
        assert_eq!(c.classify(32768, 60999), (Direction::Outbound, 60999));
        assert_eq!(c.classify(61000, 60999), (Direction::Inbound, 61000));
    }

    #[test]
    fn listening_port_set_covers_the_whole_range() {
        let mut listening = ListeningPorts::default();
        for port in [0, 1, 63, 64, 65535] {
            listening.insert(port);
            assert!(listening.contains(port));
        }
        assert!(!listening.contains(2));
        listening.clear();
        assert!(!listening.contains(65535));
    }
}
