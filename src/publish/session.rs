//! Which publish is which: matching the broker's PUBACKs to outbox entries within one connection.
//!
//! rumqttc numbers QoS 1 publishes itself and reports each number only when the packet is
//! written (`Outgoing::Publish(pkid)`), in the order the requests were handed to it. The
//! publisher therefore records what it hands over, in order ([`Session::handed`]); each
//! written packet id takes the oldest record ([`Session::written`]); a PUBACK returns the
//! record of its packet id ([`Session::acked`]). Only the publisher's own task hands requests
//! over, and it keeps far fewer in flight than rumqttc's packet-id window, so ids are never
//! reused while in use (a collision, which rumqttc reports as `AwaitAck`, is still followed).
//!
//! A connection that ends forgets its session ([`Session::reset`]): results are sent again
//! from the outbox and unacknowledged events are queued again, because the next connection is a
//! clean MQTT session in which old packet ids mean nothing.

use std::collections::{HashMap, VecDeque};

/// What one QoS 1 publish carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The outbox entry with this sequence number.
    Result(u64),
    /// An event with this payload (kept to queue it again after a reconnect).
    Event(Vec<u8>),
    /// The retained `online` status.
    Online,
    /// The retained `offline` status of a clean shutdown.
    Offline,
}

/// A packet id that the bookkeeping does not expect: the connection should be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rumqttc reported packet id {0} for a publish the publisher did not hand over")]
pub struct Mismatch(pub u16);

/// The publishes of one connection that the broker has not acknowledged yet.
#[derive(Debug, Default)]
pub struct Session {
    /// Handed to rumqttc, not yet written.
    handed: VecDeque<Sent>,
    /// Written, by packet id, with a counter that keeps the sending order.
    in_flight: HashMap<u16, (u64, Sent)>,
    /// A publish rumqttc holds back because its packet id is still in use.
    held: Option<(u16, Sent)>,
    /// Sending-order counter.
    order: u64,
}

impl Session {
    /// Records a publish handed to rumqttc.
    pub fn handed(&mut self, sent: Sent) {
        self.handed.push_back(sent);
    }

    /// rumqttc wrote a publish with this packet id (0: QoS 0, nothing to wait for).
    pub fn written(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let sent = match self.held.take() {
            Some((held, sent)) if held == pkid => sent,
            other => {
                self.held = other;
                self.handed.pop_front().ok_or(Mismatch(pkid))?
            }
        };
        if pkid != 0 {
            self.order += 1;
            self.in_flight.insert(pkid, (self.order, sent));
        }
        Ok(())
    }

    /// rumqttc holds a publish back until `pkid` is acknowledged, then writes it.
    pub fn held(&mut self, pkid: u16) -> Result<(), Mismatch> {
        let sent = self.handed.pop_front().ok_or(Mismatch(pkid))?;
        self.held = Some((pkid, sent));
        Ok(())
    }

    /// The broker acknowledged `pkid`: what it carried, if the session knows it.
    pub fn acked(&mut self, pkid: u16) -> Option<Sent> {
        self.in_flight.remove(&pkid).map(|(_, sent)| sent)
    }

    /// Results handed over and not yet acknowledged.
    pub fn results(&self) -> usize {
        self.iter().filter(|s| matches!(s, Sent::Result(_))).count()
    }

    /// Events handed over and not yet acknowledged.
    pub fn events(&self) -> usize {
        self.iter().filter(|s| matches!(s, Sent::Event(_))).count()
    }

    /// Whether everything handed over has been acknowledged.
    pub fn is_idle(&self) -> bool {
        self.handed.is_empty() && self.in_flight.is_empty() && self.held.is_none()
    }

    /// Forgets the connection's publishes; returns the unacknowledged events' payloads in the
    /// order they were sent, to be queued again.
    pub fn reset(&mut self) -> Vec<Vec<u8>> {
        let mut flown: Vec<_> = self.in_flight.drain().map(|(_, v)| v).collect();
        flown.sort_by_key(|(order, _)| *order);
        let events = flown
            .into_iter()
            .map(|(_, s)| s)
            .chain(self.held.take().map(|(_, s)| s))
            .chain(self.handed.drain(..))
            .filter_map(|s| match s {
                Sent::Event(payload) => Some(payload),
                _ => None,
            })
            .collect();
        *self = Self::default();
        events
    }

    /// Everything not yet acknowledged, in no particular order.
    fn iter(&self) -> impl Iterator<Item = &Sent> {
        self.handed.iter().chain(self.in_flight.values().map(|(_, s)| s)).chain(self.held.iter().map(|(_, s)| s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_find_their_entries() {
        let mut s = Session::default();
        s.handed(Sent::Online);
        s.handed(Sent::Result(7));
        s.handed(Sent::Result(8));
        s.written(1).unwrap();
        s.written(2).unwrap();
        assert_eq!(s.results(), 2);
        s.written(3).unwrap();
        assert_eq!(s.acked(2), Some(Sent::Result(7)));
        assert_eq!(s.acked(2), None);
        assert_eq!(s.acked(1), Some(Sent::Online));
        assert_eq!(s.results(), 1);
        assert!(!s.is_idle());
        assert_eq!(s.acked(3), Some(Sent::Result(8)));
        assert!(s.is_idle());
        assert_eq!(s.written(4), Err(Mismatch(4)));
    }

    #[test]
    fn a_held_publish_goes_out_under_the_freed_id() {
        let mut s = Session::default();
        s.handed(Sent::Result(1));
        s.written(5).unwrap();
        s.handed(Sent::Result(2));
        s.held(5).unwrap();
        assert_eq!(s.acked(5), Some(Sent::Result(1)));
        s.written(5).unwrap();
        assert_eq!(s.acked(5), Some(Sent::Result(2)));
        assert!(s.is_idle());
    }

    #[test]
    fn reset_requeues_events_in_order() {
        let mut s = Session::default();
        s.handed(Sent::Event(b"a".to_vec()));
        s.handed(Sent::Result(1));
        s.handed(Sent::Event(b"b".to_vec()));
        s.handed(Sent::Event(b"c".to_vec()));
        s.written(9).unwrap();
        s.written(3).unwrap();
        s.written(4).unwrap();
        assert_eq!(s.events(), 3);
        assert_eq!(s.acked(4), Some(Sent::Event(b"b".to_vec())));
        assert_eq!(s.reset(), [b"a".to_vec(), b"c".to_vec()]);
        assert!(s.is_idle());
    }
}
