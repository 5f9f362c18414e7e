//! Brute-force lockout. Failed authentications are counted per client
//! address and per presented key id in a sliding window; past
//! `max_failures` the subject is locked for `duration`, and every request
//! from a locked address or naming a locked key id is refused before its key
//! is looked at, so that guessing learns nothing while locked.
//!
//! Memory is bounded by `max_tracked` entries, each holding at most
//! `max_failures` timestamps. When the table is full, entries whose failures
//! have all left the window go first, then the unlocked entry failing least
//! recently, and only then the lock ending soonest: an attacker cycling
//! addresses must lock `max_tracked` subjects before any lock is forgotten.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::LockoutConfig;

/// How often at most the table is swept for ended lockouts.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The prefix of keys issued by the store: `gk.<id>.<secret>`. The id of
/// such a key is known without a lookup, so failures are counted against it.
pub const ISSUED_KEY_PREFIX: &str = "gk.";

/// What failures are counted against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// The client address.
    Address(IpAddr),
    /// The key id a presented key names.
    KeyId(Arc<str>),
}

impl Subject {
    /// `address` or `key_id`: the metric label and the audit scope.
    pub fn scope(&self) -> &'static str {
        match self {
            Subject::Address(_) => "address",
            Subject::KeyId(_) => "key_id",
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Address(addr) => write!(f, "address {addr}"),
            Subject::KeyId(id) => write!(f, "key id {id}"),
        }
    }
}

/// The key id an `Authorization: Bearer gk.<id>.<secret>` header names,
/// whether or not such a key exists. Ids are at most 64 characters of
/// `a-z`, `0-9`, `_` and `-`; anything else names none, so a guesser cannot
/// grow the table with arbitrary text per entry.
pub fn presented_key_id(header: Option<&str>) -> Option<Arc<str>> {
    let (_, key) = header?.split_once(' ')?;
    let rest = key.trim().strip_prefix(ISSUED_KEY_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    (!secret.is_empty() && crate::auth::valid_key_id(id)).then(|| Arc::from(id))
}

/// The client address: the peer, or behind trusted proxies the right-most
/// `X-Forwarded-For` address that is not itself a trusted proxy. Without a
/// peer (in-process calls) the unspecified address stands for every caller.
pub fn client_address(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(forwarded) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in forwarded.rsplit(',') {
        // An unparsable hop ends the chain: whatever is left of it was
        // written by someone we cannot vouch for, so the last good hop counts.
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = addr;
        if !is_trusted(&addr) {
            break;
        }
    }
    client
}

/// A subject locked by a failure, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locked {
    /// Who.
    pub subject: Subject,
    /// Failures counted in the window when it locked.
    pub failures: u32,
}

/// Why an entry left the table while locked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlock {
    /// The lockout ran its time.
    Expired,
    /// The table was full and this lock ended soonest.
    Evicted,
}

impl Unlock {
    /// `expired` or `evicted`, for the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            Unlock::Expired => "expired",
            Unlock::Evicted => "evicted",
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// Failure times within the window, oldest first, at most `max_failures`.
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    last_failure: Instant,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<Subject, Entry>,
    last_sweep: Option<Instant>,
    /// Locks that ended or were evicted since the last [`Lockout::sweep`].
    unlocked: Vec<(Subject, Unlock)>,
}

/// The lockout table. One per service instance.
#[derive(Debug)]
pub struct Lockout {
    config: LockoutConfig,
    table: Mutex<Table>,
}

impl Lockout {
    /// An empty table with these limits.
    pub fn new(config: &LockoutConfig) -> Lockout {
        Lockout {
            config: config.clone(),
            table: Mutex::new(Table::default()),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &LockoutConfig {
        &self.config
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves counts, not broken invariants.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first of `subjects` that is locked at `now`, with the time left.
    pub fn locked(&self, subjects: &[Subject], now: Instant) -> Option<(Subject, Duration)> {
        let table = self.table();
        subjects.iter().find_map(|s| {
            let until = table.entries.get(s)?.locked_until?;
            (until > now).then(|| (s.clone(), until - now))
        })
    }

    /// Counts a failed authentication against each subject, and returns those
    /// it locked.
    pub fn fail(&self, subjects: &[Subject], now: Instant) -> Vec<Locked> {
        let window = self.config.window;
        let max = self.config.max_failures as usize;
        let mut table = self.table();
        let mut locked = Vec::new();
        for subject in subjects {
            if !table.entries.contains_key(subject) {
                self.make_room(&mut table, now);
            }
            let entry = table.entries.entry(subject.clone()).or_insert(Entry {
                failures: VecDeque::new(),
                locked_until: None,
                last_failure: now,
            });
            entry.last_failure = now;
            if entry.locked_until.is_some_and(|t| t > now) {
                continue;
            }
            while entry
                .failures
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                entry.failures.pop_front();
            }
            entry.failures.push_back(now);
            if entry.failures.len() >= max {
                let failures = u32::try_from(entry.failures.len()).unwrap_or(u32::MAX);
                entry.failures.clear();
                entry.locked_until = Some(now + self.config.duration);
                locked.push(Locked {
                    subject: subject.clone(),
                    failures,
                });
            }
        }
        locked
    }

    /// Frees one slot when the table is full (see the module docs).
    fn make_room(&self, table: &mut Table, now: Instant) {
        let max = self.config.max_tracked as usize;
        if table.entries.len() < max {
            return;
        }
        let window = self.config.window;
        table.entries.retain(|_, e| {
            e.locked_until.is_some() || now.saturating_duration_since(e.last_failure) < window
        });
        if table.entries.len() < max {
            return;
        }
        let stalest_unlocked = table
            .entries
            .iter()
            .filter(|(_, e)| e.locked_until.is_none_or(|t| t <= now))
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(s, e)| (s.clone(), e.locked_until.is_some()));
        if let Some((subject, was_locked)) = stalest_unlocked {
            table.entries.remove(&subject);
            if was_locked {
                table.unlocked.push((subject, Unlock::Expired));
            }
            return;
        }
        let soonest = table
            .entries
            .iter()
            .min_by_key(|(_, e)| e.locked_until)
            .map(|(s, _)| s.clone());
        if let Some(subject) = soonest {
            table.entries.remove(&subject);
            table.unlocked.push((subject, Unlock::Evicted));
        }
    }

    /// Ends the lockouts that ran their time and forgets entries with no
    /// failure left in the window; returns every lock that ended since the
    /// last sweep, for the audit log. Does nothing (and returns nothing) when
    /// the last sweep is more recent than a quarter of a second, so calling
    /// it on every request is cheap.
    pub fn sweep(&self, now: Instant) -> Vec<(Subject, Unlock)> {
        let window = self.config.window;
        let mut table = self.table();
        if table
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_INTERVAL)
        {
            return Vec::new();
        }
        table.last_sweep = Some(now);
        let mut ended = std::mem::take(&mut table.unlocked);
        for (subject, entry) in &mut table.entries {
            if entry.locked_until.is_some_and(|t| t <= now) {
                entry.locked_until = None;
                ended.push((subject.clone(), Unlock::Expired));
            }
        }
        table.entries.retain(|_, e| {
            e.locked_until.is_some()
                || e.failures
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
        });
        ended.sort_by(|a, b| a.0.cmp(&b.0));
        ended
    }

    /// Entries held, locked or counting: what `max_tracked` bounds.
    pub fn tracked(&self) -> usize {
        self.table().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_failures: u32, max_tracked: u32) -> LockoutConfig {
        LockoutConfig {
            max_failures,
            window: Duration::from_secs(10),
            duration: Duration::from_secs(30),
            max_tracked,
            trusted_proxies: Vec::new(),
        }
    }

    fn addr(last: u8) -> Subject {
        Subject::Address(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
    }

    #[test]
    fn locks_at_the_threshold_and_unlocks_after_the_duration() {
        let lockout = Lockout::new(&config(3, 100));
        let t0 = Instant::now();
        let a = [addr(1)];
        assert!(lockout.fail(&a, t0).is_empty());
        assert!(lockout.fail(&a, t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(lockout.locked(&a, t0 + Duration::from_secs(1)), None);
        let locked = lockout.fail(&a, t0 + Duration::from_secs(2));
        assert_eq!(
            locked,
            vec![Locked {
                subject: addr(1),
                failures: 3
            }]
        );
        assert_eq!(
            lockout.locked(&a, t0 + Duration::from_secs(12)),
            Some((addr(1), Duration::from_secs(20)))
        );
        // Another address is untouched.
        assert_eq!(
            lockout.locked(&[addr(2)], t0 + Duration::from_secs(3)),
            None
        );
        let later = t0 + Duration::from_secs(32);
        assert_eq!(lockout.locked(&a, later), None);
        assert_eq!(lockout.sweep(later), vec![(addr(1), Unlock::Expired)]);
        assert!(lockout.sweep(later + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let lockout = Lockout::new(&config(3, 100));
        let t0 = Instant::now();
        let a = [addr(1)];
        for s in [0, 6, 12, 18, 24] {
            assert!(
                lockout.fail(&a, t0 + Duration::from_secs(s)).is_empty(),
                "at {s}s"
            );
        }
    }

    #[test]
    fn cycling_addresses_cannot_grow_the_table_or_free_a_lock_cheaply() {
        let lockout = Lockout::new(&config(2, 16));
        let t0 = Instant::now();
        let victim = [addr(0)];
        lockout.fail(&victim, t0);
        assert_eq!(lockout.fail(&victim, t0).len(), 1);
        for i in 0..10_000u32 {
            let other = Subject::Address(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
            lockout.fail(&[other], t0 + Duration::from_millis(u64::from(i)));
            assert!(lockout.tracked() <= 16);
        }
        assert!(
            lockout
                .locked(&victim, t0 + Duration::from_secs(11))
                .is_some()
        );
    }

    #[test]
    fn presented_key_ids_are_read_only_from_issued_keys() {
        assert_eq!(
            presented_key_id(Some("Bearer gk.ci-bot.0123abcd")).as_deref(),
            Some("ci-bot")
        );
        assert_eq!(presented_key_id(Some("Bearer gauntlet-dev-key")), None);
        assert_eq!(presented_key_id(Some("Bearer gk.UPPER.x")), None);
        assert_eq!(presented_key_id(Some("Bearer gk.id.")), None);
        assert_eq!(presented_key_id(None), None);
    }

    #[test]
    fn forwarded_addresses_count_only_behind_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> =
            vec!["127.0.0.0/8".parse().unwrap_or_else(|e| panic!("{e}"))];
        let loopback = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let outside = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));
        let client = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(
            client_address(loopback, Some("198.51.100.7"), &trusted),
            client
        );
        assert_eq!(
            client_address(
                loopback,
                Some("203.0.113.1, 198.51.100.7, 127.0.0.2"),
                &trusted
            ),
            client
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_address(outside, Some("198.51.100.7"), &trusted),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))
        );
        assert_eq!(
            client_address(loopback, Some("nonsense"), &trusted),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(
            client_address(loopback, Some("198.51.100.7"), &[]),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        );
    }
}
