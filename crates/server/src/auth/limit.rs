//! Failed authentications per peer address: a token bucket each, in a
//! bounded map.
//!
//! Invariants: an address may fail `burst` times at once and then
//! `rate` times a second; past that its calls are refused before their
//! token is looked at. IPv6 addresses count per /64 (one host usually has
//! the whole /64). The map holds at most [`MAX_PEERS`] addresses; buckets
//! that refilled are forgotten (so it is empty again when nobody fails).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

/// Most addresses tracked at once.
pub(super) const MAX_PEERS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub(super) struct FailureLimit {
    buckets: HashMap<Option<IpAddr>, Bucket>,
    burst: f64,
    rate: f64,
}

fn key(peer: Option<IpAddr>) -> Option<IpAddr> {
    peer.map(|ip| match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    })
}

impl FailureLimit {
    pub(super) fn new(burst: u32, rate: f64) -> FailureLimit {
        FailureLimit {
            buckets: HashMap::new(),
            burst: f64::from(burst.max(1)),
            rate: rate.max(0.0),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> Bucket {
        let secs = now.saturating_duration_since(b.at).as_secs_f64();
        Bucket {
            tokens: (b.tokens + secs * self.rate).min(self.burst),
            at: now,
        }
    }

    /// True when `peer` may not fail again now.
    pub(super) fn is_over(&mut self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let k = key(peer);
        let Some(b) = self.buckets.get(&k).copied() else {
            return false;
        };
        let b = self.refilled(b, now);
        self.buckets.insert(k, b);
        b.tokens < 1.0
    }

    /// Counts one failure of `peer`; true when it was over the limit.
    pub(super) fn charge(&mut self, peer: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let k = key(peer);
        if !self.buckets.contains_key(&k) && self.buckets.len() >= MAX_PEERS {
            self.forget_refilled();
            if self.buckets.len() >= MAX_PEERS {
                // More failing addresses than we track: start over rather
                // than lock out every new address.
                tracing::warn!(
                    peers = self.buckets.len(),
                    "failed authentications from too many addresses; resetting their limits"
                );
                self.buckets.clear();
            }
        }
        let b = self.buckets.get(&k).copied().unwrap_or(Bucket {
            tokens: self.burst,
            at: now,
        });
        let mut b = self.refilled(b, now);
        let over = b.tokens < 1.0;
        if !over {
            b.tokens -= 1.0;
        }
        self.buckets.insert(k, b);
        over
    }

    /// Forgets buckets that are full again; true when none is left.
    pub(super) fn forget_refilled(&mut self) -> bool {
        let now = Instant::now();
        let (burst, rate) = (self.burst, self.rate);
        self.buckets.retain(|_, b| {
            let secs = now.saturating_duration_since(b.at).as_secs_f64();
            b.tokens + secs * rate < burst
        });
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_after_its_burst_and_others_are_not() {
        let mut l = FailureLimit::new(3, 0.0);
        let a = Some("192.0.2.1".parse().expect("ip"));
        let b = Some("192.0.2.2".parse().expect("ip"));
        assert!(!l.charge(a) && !l.charge(a) && !l.charge(a));
        assert!(l.is_over(a));
        assert!(l.charge(a));
        assert!(!l.is_over(b));
        assert!(!l.forget_refilled());
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let mut l = FailureLimit::new(1, 0.0);
        assert!(!l.charge(Some("2001:db8::1".parse().expect("ip"))));
        assert!(l.is_over(Some("2001:db8::ffff:2".parse().expect("ip"))));
        assert!(!l.is_over(Some("2001:db8:0:1::1".parse().expect("ip"))));
    }

    #[test]
    fn the_map_stays_bounded() {
        let mut l = FailureLimit::new(1, 0.0);
        for i in 0..(MAX_PEERS as u32 + 10) {
            l.charge(Some(IpAddr::V4(i.into())));
        }
        assert!(l.buckets.len() <= MAX_PEERS);
    }
}
