//! The harness's own verifier of the audit chain, written from the hash
//! format the orchestrator documents (README, `system/src/store/SCHEMA.md`),
//! not from its code: a bug in the orchestrator's verifier must not hide a
//! bug in its chain.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::db::{AuditHead, AuditRow};

/// The domain separator every hashed entry starts with.
const DOMAIN: &[u8] = b"orchestrator-audit-v1";
/// `prev_hash` of entry 1.
const GENESIS: [u8; 32] = [0; 32];

/// What verification found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    /// Entries read.
    pub entries: u64,
    /// The first entry that does not verify, and why; `None` when the chain
    /// and its head verify.
    pub first_bad: Option<BadEntry>,
}

/// An entry that does not verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BadEntry {
    /// Its seq (for a bad head, the seq the head names).
    pub seq: i64,
    /// Why, in words.
    pub reason: String,
}

impl ChainReport {
    /// Whether the whole chain and its head verify.
    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// SHA-256 of one entry as the documented format says: the domain, `seq`
/// (8 bytes, big-endian), `ts_ms` (8 bytes, big-endian, signed), `actor`,
/// `action`, `subject` and `details` each as a 4-byte big-endian length and
/// its bytes, then `prev_hash`.
pub fn entry_hash(row: &AuditRow) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(row.seq.to_be_bytes());
    h.update(row.ts_ms.to_be_bytes());
    for field in [&row.actor, &row.action, &row.subject, &row.details] {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        h.update(len.to_be_bytes());
        h.update(field);
    }
    h.update(&row.prev_hash);
    h.finalize().into()
}

/// Verifies the chain: seqs from 1 without gaps, each `prev_hash` the
/// previous entry's hash, each `hash` the entry's recomputed hash, and the
/// head naming the last entry. Names the first entry that fails.
pub fn verify(rows: &[AuditRow], head: Option<&AuditHead>) -> ChainReport {
    let mut first_bad = None;
    let mut previous: Vec<u8> = GENESIS.to_vec();
    for (index, row) in rows.iter().enumerate() {
        let expected_seq = index as i64 + 1;
        let computed = entry_hash(row);
        let reason = if row.seq != expected_seq {
            Some(format!(
                "seq {} where {expected_seq} belongs (an entry was deleted or renumbered)",
                row.seq
            ))
        } else if row.prev_hash != previous {
            Some(
                "prev_hash is not the previous entry's hash (the chain was cut or reordered)"
                    .to_owned(),
            )
        } else if row.hash[..] != computed[..] {
            Some("hash does not match the entry's contents (the entry was altered, or written with another hash)".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            first_bad = Some(BadEntry {
                seq: row.seq,
                reason,
            });
            break;
        }
        previous.clone_from(&row.hash);
    }
    if first_bad.is_none() {
        first_bad = check_head(rows, head);
    }
    ChainReport {
        entries: rows.len() as u64,
        first_bad,
    }
}

/// The head must name the last entry: a deleted tail leaves it pointing
/// further than the rows go.
fn check_head(rows: &[AuditRow], head: Option<&AuditHead>) -> Option<BadEntry> {
    let Some(head) = head else {
        return Some(BadEntry {
            seq: rows.len() as i64,
            reason: "the audit head is missing".to_owned(),
        });
    };
    let (last_seq, last_hash) = rows
        .last()
        .map_or((0, &GENESIS[..]), |r| (r.seq, &r.hash[..]));
    if head.last_seq != last_seq {
        return Some(BadEntry {
            seq: head.last_seq,
            reason: format!(
                "the head names entry {} but the log ends at {last_seq} (its tail was deleted)",
                head.last_seq
            ),
        });
    }
    if head.last_hash[..] != *last_hash {
        return Some(BadEntry {
            seq: head.last_seq,
            reason: "the head's hash is not the last entry's".to_owned(),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> (Vec<AuditRow>, AuditHead) {
        let mut rows = Vec::new();
        let mut prev = GENESIS.to_vec();
        for seq in 1..=n {
            let mut row = AuditRow {
                seq,
                ts_ms: 1_000 + seq,
                actor: b"system".to_vec(),
                action: b"job.accepted".to_vec(),
                subject: format!("job-{seq}").into_bytes(),
                details: br#"{"n":1}"#.to_vec(),
                prev_hash: prev.clone(),
                hash: Vec::new(),
            };
            row.hash = entry_hash(&row).to_vec();
            prev.clone_from(&row.hash);
            rows.push(row);
        }
        let head = AuditHead {
            last_seq: n,
            last_hash: prev,
        };
        (rows, head)
    }

    #[test]
    fn an_intact_chain_verifies_and_every_kind_of_tampering_is_named() {
        let (rows, head) = chain(4);
        let report = verify(&rows, Some(&head));
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.entries, 4);

        let mut edited = rows.clone();
        edited[2].details = br#"{"n":2}"#.to_vec();
        let bad = verify(&edited, Some(&head)).first_bad.unwrap();
        assert_eq!(bad.seq, 3);
        assert!(bad.reason.contains("altered"), "{bad:?}");

        let mut gap = rows.clone();
        gap.remove(1);
        assert_eq!(verify(&gap, Some(&head)).first_bad.unwrap().seq, 3);

        let truncated = &rows[..3];
        let bad = verify(truncated, Some(&head)).first_bad.unwrap();
        assert!(bad.reason.contains("tail"), "{bad:?}");

        assert!(verify(&rows, None).first_bad.is_some());
        let empty = verify(
            &[],
            Some(&AuditHead {
                last_seq: 0,
                last_hash: GENESIS.to_vec(),
            }),
        );
        assert!(empty.ok() && empty.entries == 0);
    }
}
