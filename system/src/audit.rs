//! The audit log's entry format, its hash chain and its verification. Pure
//! code: the store appends entries and feeds them back here to verify.
//!
//! # The hash
//!
//! Each entry is `{seq, ts, actor, action, subject, details, prev_hash, hash}`.
//! `prev_hash` is the previous entry's `hash` (32 zero bytes for entry 1), and
//! `hash` is SHA-256 over this canonical serialisation of the entry:
//!
//! ```text
//! "orchestrator-audit-v1"          21 bytes, ASCII, no terminator
//! seq                              8 bytes, unsigned big-endian
//! ts_ms                            8 bytes, signed big-endian (Unix milliseconds)
//! actor, action, subject, details  each: 4-byte big-endian length, then the UTF-8 bytes
//! prev_hash                        32 bytes
//! ```
//!
//! Length prefixes make the encoding unambiguous (no field can bleed into the
//! next), and hashing the stored bytes rather than a re-serialised value
//! means a verifier in any language needs no JSON canonicaliser. `details` is
//! stored as compact JSON with object keys sorted, so that it reads well, but
//! the hash covers its bytes as stored, whatever they are.
//!
//! # What verification catches
//!
//! Any change to any stored byte of an entry (its hash no longer matches),
//! a deleted or renumbered entry (a gap in `seq`), a reordered chain
//! (`prev_hash` no longer matches), and a truncated tail (the head, written in
//! the same transaction as each entry, names a later last entry). It cannot
//! catch a rewrite of the whole chain and the head by someone with write
//! access to the file: for that, record the `head_hash` that verification
//! reports somewhere else.

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The domain separator that starts every hashed entry.
const DOMAIN: &[u8] = b"orchestrator-audit-v1";

/// An entry about to be appended: what happened, to what, by whom.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    /// Who did it: an API key id, `worker-N`, or `system`.
    pub actor: String,
    /// What happened, a dotted name such as `job.accepted`.
    pub action: &'static str,
    /// What it happened to: a job or task id, a tenant, a route.
    pub subject: String,
    /// Further facts, a JSON object. Never model output or prompts.
    pub details: Value,
}

impl NewEntry {
    /// An entry with these fields.
    pub fn new(
        actor: impl Into<String>,
        action: &'static str,
        subject: impl Into<String>,
        details: Value,
    ) -> NewEntry {
        NewEntry {
            actor: actor.into(),
            action,
            subject: subject.into(),
            details,
        }
    }
}

/// `details` as stored: compact JSON with object keys sorted at every level.
pub fn canonical_details(details: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(details).to_string()
}

/// An entry's fields as stored, which may have been tampered with: text
/// columns are raw bytes, hashes of any length.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredEntry {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When, in Unix milliseconds.
    pub ts_ms: i64,
    /// The actor's bytes.
    pub actor: Vec<u8>,
    /// The action's bytes.
    pub action: Vec<u8>,
    /// The subject's bytes.
    pub subject: Vec<u8>,
    /// The details' bytes.
    pub details: Vec<u8>,
    /// The previous entry's hash, as stored.
    pub prev_hash: Vec<u8>,
    /// This entry's hash, as stored.
    pub hash: Vec<u8>,
}

/// SHA-256 over the canonical serialisation described in the module docs.
pub fn entry_hash(
    seq: u64,
    ts_ms: i64,
    actor: &[u8],
    action: &[u8],
    subject: &[u8],
    details: &[u8],
    prev_hash: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(ts_ms.to_be_bytes());
    for field in [actor, action, subject, details] {
        // Fields are bounded far below 4 GiB by the request limits; a longer
        // one would still hash deterministically, with a saturated prefix.
        h.update(u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(field);
    }
    h.update(prev_hash);
    h.finalize().into()
}

/// The outcome of verifying the chain: the body of `GET /v1/audit/verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Whether every entry verified.
    pub ok: bool,
    /// How many entries were read.
    pub entries: u64,
    /// The first entry that does not verify (or is missing), if any.
    pub first_bad_seq: Option<u64>,
    /// Why it does not verify.
    pub reason: Option<String>,
    /// The hash of the last entry (hex), to record elsewhere and compare later.
    pub head_hash: String,
}

/// Checks entries fed in ascending `seq` order, then the head.
#[derive(Debug)]
pub struct ChainVerifier {
    /// The seq the next entry must have.
    expected: u64,
    /// The hash the next entry's `prev_hash` must equal.
    prev: Vec<u8>,
    entries: u64,
    /// The first finding: (seq, reason).
    bad: Option<(u64, String)>,
    /// An entry with a seq below 1, which belongs nowhere in the chain.
    stray: Option<(u64, String)>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected: 1,
            prev: GENESIS_HASH.to_vec(),
            entries: 0,
            bad: None,
            stray: None,
        }
    }
}

impl ChainVerifier {
    /// A verifier expecting entry 1 first.
    pub fn new() -> ChainVerifier {
        ChainVerifier::default()
    }

    /// Checks the next entry. After the first finding, entries are only
    /// counted.
    pub fn push(&mut self, entry: &StoredEntry) {
        self.entries += 1;
        if self.bad.is_some() {
            return;
        }
        let Ok(seq) = u64::try_from(entry.seq) else {
            self.stray_entry(entry.seq);
            return;
        };
        if seq == 0 {
            self.stray_entry(entry.seq);
            return;
        }
        if seq > self.expected {
            self.bad = Some((
                self.expected,
                format!(
                    "entry {} is missing: the entry after {} is {seq}",
                    self.expected,
                    self.expected - 1
                ),
            ));
            return;
        }
        if entry.prev_hash != self.prev {
            self.bad = Some((
                seq,
                if seq == 1 {
                    "prev_hash of the first entry is not the genesis hash (32 zero bytes)"
                        .to_owned()
                } else {
                    format!("prev_hash does not match the hash of entry {}", seq - 1)
                },
            ));
            return;
        }
        let computed = entry_hash(
            seq,
            entry.ts_ms,
            &entry.actor,
            &entry.action,
            &entry.subject,
            &entry.details,
            &entry.prev_hash,
        );
        if entry.hash != computed {
            self.bad = Some((
                seq,
                "hash does not match the entry's contents (the entry was altered)".to_owned(),
            ));
            return;
        }
        self.prev.clone_from(&entry.hash);
        self.expected = seq + 1;
    }

    fn stray_entry(&mut self, seq: i64) {
        if self.stray.is_none() {
            // A seq below 1 can only come from an edit; the entry it was
            // taken from shows up as a gap, which is reported first.
            self.stray = Some((
                0,
                format!("an entry has seq {seq}, outside the chain (seqs start at 1)"),
            ));
        }
    }

    /// The verdict, given the head as stored: the last seq and its hash.
    pub fn finish(self, head: Option<(i64, Vec<u8>)>) -> Verification {
        let last = self.expected - 1;
        let mut bad = self.bad;
        if bad.is_none() {
            bad = match &head {
                None => Some((last + 1, "the audit head record is missing".to_owned())),
                Some((head_seq, _)) if *head_seq < 0 => {
                    Some((last + 1, format!("the audit head names seq {head_seq}")))
                }
                Some((head_seq, _)) if (*head_seq as u64) > last => Some((
                    last + 1,
                    format!(
                        "entry {} is missing: the log should end at entry {head_seq}",
                        last + 1
                    ),
                )),
                Some((head_seq, _)) if (*head_seq as u64) < last => Some((
                    *head_seq as u64 + 1,
                    format!(
                        "entry {} is beyond the recorded end of the log (entry {head_seq})",
                        *head_seq as u64 + 1
                    ),
                )),
                Some((_, hash)) if *hash != self.prev => Some((
                    last,
                    format!("the recorded head hash does not match entry {last}"),
                )),
                Some(_) => None,
            };
        }
        let bad = bad.or(self.stray);
        Verification {
            ok: bad.is_none(),
            entries: self.entries,
            first_bad_seq: bad.as_ref().map(|(seq, _)| *seq),
            reason: bad.map(|(_, reason)| reason),
            head_hash: hex::encode(&self.prev),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: u64) -> Vec<StoredEntry> {
        let mut prev = GENESIS_HASH.to_vec();
        (1..=n)
            .map(|seq| {
                let details = canonical_details(&json!({"n": seq}));
                let hash = entry_hash(seq, 1000, b"a", b"x.y", b"s", details.as_bytes(), &prev);
                let entry = StoredEntry {
                    seq: seq as i64,
                    ts_ms: 1000,
                    actor: b"a".to_vec(),
                    action: b"x.y".to_vec(),
                    subject: b"s".to_vec(),
                    details: details.into_bytes(),
                    prev_hash: prev.clone(),
                    hash: hash.to_vec(),
                };
                prev = hash.to_vec();
                entry
            })
            .collect()
    }

    fn verify(entries: &[StoredEntry], head: Option<(i64, Vec<u8>)>) -> Verification {
        let mut v = ChainVerifier::new();
        for e in entries {
            v.push(e);
        }
        v.finish(head)
    }

    fn head(entries: &[StoredEntry]) -> Option<(i64, Vec<u8>)> {
        let last = entries.last().unwrap();
        Some((last.seq, last.hash.clone()))
    }

    #[test]
    fn an_intact_chain_verifies_and_an_empty_one_too() {
        let entries = chain(5);
        let v = verify(&entries, head(&entries));
        assert!(v.ok, "{v:?}");
        assert_eq!(v.entries, 5);
        let empty = verify(&[], Some((0, GENESIS_HASH.to_vec())));
        assert!(empty.ok, "{empty:?}");
        assert_eq!(empty.head_hash, "0".repeat(64));
    }

    #[test]
    fn findings_name_the_first_bad_entry() {
        let entries = chain(5);
        let mut edited = entries.clone();
        edited[2].details[1] ^= 1;
        let v = verify(&edited, head(&entries));
        assert_eq!((v.ok, v.first_bad_seq), (false, Some(3)), "{v:?}");

        let mut gap = entries.clone();
        gap.remove(1);
        assert_eq!(verify(&gap, head(&entries)).first_bad_seq, Some(2));

        let truncated = &entries[..4];
        let v = verify(truncated, head(&entries));
        assert_eq!(v.first_bad_seq, Some(5), "{v:?}");

        let mut renumbered = entries.clone();
        renumbered[4].seq = -5;
        renumbered.rotate_right(1);
        let v = verify(&renumbered, head(&entries));
        assert_eq!(v.first_bad_seq, Some(5), "{v:?}");
    }

    #[test]
    fn canonical_details_sort_keys_at_every_level() {
        let text = canonical_details(&json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": null}}));
        assert_eq!(text, r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }
}
