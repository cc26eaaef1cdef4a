//! [`Preauth`]: the connections a node holds while their handshake runs,
//! bounded in all and per source address.
//!
//! A full table makes room by closing the connection that has waited
//! longest (of the same source, when that source is at its own limit),
//! rather than refusing the newcomer. Connections that never authenticate
//! (a flood, a scanner that holds its sockets open) are then the ones that
//! go, while a real peer, which finishes its handshake within a round trip
//! or two, is never the oldest: to push it out a flood would have to open
//! the whole table's worth of connections within that round trip. Refusing
//! newcomers instead let a flood hold the table for ever, and everyone on
//! the flooding host's address (every local client, a worker dialing in)
//! with it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::limits::{PREAUTH_CONNECTIONS_MAX, PREAUTH_PER_SOURCE_MAX};

/// Connections in their handshake, oldest first.
#[derive(Default)]
pub struct Preauth {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// By admission order: the source and the token that closes it.
    waiting: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_source: HashMap<IpAddr, usize>,
}

/// A connection's place in the table; freed on drop.
pub struct PreauthSlot {
    table: Arc<Preauth>,
    seq: u64,
    closed: CancellationToken,
}

/// Whom a newcomer displaced, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Displaced {
    /// The source of the connection closed.
    pub source: IpAddr,
    /// Whether the table was full for that source alone (else in all).
    pub per_source: bool,
}

impl Displaced {
    /// What happened, for the log.
    pub fn describe(&self) -> String {
        if self.per_source {
            format!("{PREAUTH_PER_SOURCE_MAX} connections from one address waiting to authenticate; closed the oldest of them to make room")
        } else {
            format!("{PREAUTH_CONNECTIONS_MAX} connections waiting to authenticate; closed the oldest to make room")
        }
    }
}

impl Preauth {
    /// A place for a connection from `source`, and the connection closed to
    /// make room for it, if one was.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> (PreauthSlot, Option<Displaced>) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        let displaced = if mine >= PREAUTH_PER_SOURCE_MAX {
            let oldest = t
                .waiting
                .iter()
                .find(|(_, (s, _))| *s == source)
                .map(|(seq, _)| *seq);
            oldest.map(|seq| (t.remove(seq), true))
        } else if t.waiting.len() >= PREAUTH_CONNECTIONS_MAX {
            let oldest = t.waiting.keys().next().copied();
            oldest.map(|seq| (t.remove(seq), false))
        } else {
            None
        };
        let displaced = displaced.and_then(|(gone, per_source)| {
            let (source, token) = gone?;
            token.cancel();
            Some(Displaced { source, per_source })
        });
        let seq = t.next;
        t.next += 1;
        let closed = CancellationToken::new();
        t.waiting.insert(seq, (source, closed.clone()));
        *t.per_source.entry(source).or_default() += 1;
        let slot = PreauthSlot {
            table: self.clone(),
            seq,
            closed,
        };
        (slot, displaced)
    }

    /// Connections in their handshake now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    fn remove(&mut self, seq: u64) -> Option<(IpAddr, CancellationToken)> {
        let (source, token) = self.waiting.remove(&seq)?;
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
        Some((source, token))
    }
}

impl PreauthSlot {
    /// Resolves when a newer connection took this one's place: its
    /// handshake is to be abandoned and the connection closed.
    pub async fn displaced(&self) {
        self.closed.cancelled().await
    }
}

impl Drop for PreauthSlot {
    fn drop(&mut self) {
        let mut t = self.table.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.remove(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_source_at_its_limit_loses_its_oldest_connection_to_a_new_one() {
        let t = Arc::new(Preauth::default());
        let mut slots: Vec<PreauthSlot> = (0..PREAUTH_PER_SOURCE_MAX)
            .map(|_| t.admit(ip(1)).0)
            .collect();
        let (_other, displaced) = t.admit(ip(2));
        assert_eq!(displaced, None, "another source still has room");
        let (newest, displaced) = t.admit(ip(1));
        assert_eq!(
            displaced,
            Some(Displaced {
                source: ip(1),
                per_source: true
            })
        );
        assert!(slots[0].closed.is_cancelled(), "the oldest goes");
        assert!(!slots[1].closed.is_cancelled());
        assert!(!newest.closed.is_cancelled());
        assert_eq!(t.len(), PREAUTH_PER_SOURCE_MAX + 1);
        slots.clear();
        drop(newest);
        assert_eq!(t.len(), 1, "dropping frees every place, displaced or not");
    }

    #[test]
    fn a_full_table_loses_its_oldest_connection_of_any_source() {
        let t = Arc::new(Preauth::default());
        let first = t.admit(ip(200)).0;
        let _rest: Vec<PreauthSlot> = (1..PREAUTH_CONNECTIONS_MAX)
            .map(|i| t.admit(ip((i % 100) as u8)).0)
            .collect();
        let (_new, displaced) = t.admit(ip(201));
        assert_eq!(
            displaced,
            Some(Displaced {
                source: ip(200),
                per_source: false
            })
        );
        assert!(first.closed.is_cancelled());
        assert_eq!(t.len(), PREAUTH_CONNECTIONS_MAX);
    }
}
