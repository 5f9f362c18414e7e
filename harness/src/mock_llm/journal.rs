//! The call journal: what every chat completion request looked like and what
//! the mock did with it, in a bounded ring that drops the oldest records.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::program::EffectKind;

/// Token counts as a completion reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens in the completion.
    pub completion_tokens: u64,
    /// As reported; the sum of the two unless a rule chose otherwise.
    pub total_tokens: u64,
}

/// One chat completion request, as the mock saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call's sequence number: 1 for the first call since start or reset.
    pub seq: u64,
    /// When the request's body had been read, in milliseconds since the Unix epoch.
    pub received_unix_ms: u64,
    /// The `X-Request-Id` header, cut to [`MAX_HEADER_BYTES`].
    pub request_id: Option<String>,
    /// The `X-Attempt` header: which attempt of the request this call is,
    /// from 1; `None` when absent or not a number.
    #[serde(default)]
    pub attempt: Option<u32>,
    /// The `Idempotency-Key` header, cut to [`MAX_HEADER_BYTES`].
    pub idempotency_key: Option<String>,
    /// Whether an `Authorization` header was sent (its value is never kept).
    pub authorization: bool,
    /// The requested model, cut to [`MAX_HEADER_BYTES`]; `None` when the body
    /// could not be read.
    pub model: Option<String>,
    /// SHA-256 of the prompt (the last user message), in hex; `None` when the
    /// body could not be read.
    pub prompt_sha256: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// The index of the rule that applied.
    pub rule_index: Option<usize>,
    /// The name of the rule that applied, if it has one.
    pub rule_name: Option<String>,
    /// The effect applied; `None` for the default answer or a refused request.
    pub effect: Option<EffectKind>,
    /// The status sent (or to be sent, for a call still delayed or hanging).
    pub status: u16,
    /// The `Retry-After` header sent with it, as sent.
    #[serde(default)]
    pub retry_after: Option<String>,
    /// The usage written into the answer, even if a fault then mangled the
    /// body; `None` when the answer carries none (errors, hangs, streams
    /// without `stream_options.include_usage`).
    pub usage: Option<Usage>,
    /// Why the mock refused the request, for 4xx answers of its own.
    pub error: Option<String>,
}

/// The longest header value kept in a record, in bytes.
pub const MAX_HEADER_BYTES: usize = 256;

/// A page of the journal, as `GET /_mock/calls` returns it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallsPage {
    /// Records in sequence order.
    pub calls: Vec<CallRecord>,
    /// Records dropped from the front of the ring since start or reset.
    pub dropped: u64,
    /// The highest sequence number handed out when the page was taken (0
    /// before the first call): a client paging through the journal is done
    /// once it has seen this one.
    pub last_seq: u64,
}

/// A ring of at most `capacity` records, in sequence order.
#[derive(Debug)]
pub(crate) struct Journal {
    records: VecDeque<CallRecord>,
    capacity: usize,
    dropped: u64,
}

impl Journal {
    /// An empty journal. A capacity of 0 is treated as 1.
    pub fn new(capacity: usize) -> Journal {
        Journal {
            records: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Appends a record, dropping the oldest if the ring is full. Records
    /// must arrive in sequence order; the server appends under the same lock
    /// that assigns sequence numbers.
    pub fn push(&mut self, record: CallRecord) {
        if self.records.len() >= self.capacity {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(record);
    }

    /// Up to `limit` records with a sequence number above `after_seq`.
    pub fn page(&self, after_seq: u64, limit: usize) -> CallsPage {
        let start = self.records.partition_point(|r| r.seq <= after_seq);
        CallsPage {
            calls: self.records.range(start..).take(limit).cloned().collect(),
            dropped: self.dropped,
            last_seq: self.records.back().map_or(0, |r| r.seq),
        }
    }
}

/// A header value for the journal: lossy UTF-8, cut at a character boundary
/// to at most [`MAX_HEADER_BYTES`].
pub(crate) fn header_text(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut end = text.len().min(MAX_HEADER_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64) -> CallRecord {
        CallRecord {
            seq,
            received_unix_ms: 0,
            request_id: None,
            attempt: None,
            idempotency_key: None,
            authorization: false,
            model: None,
            prompt_sha256: None,
            stream: false,
            rule_index: None,
            rule_name: None,
            effect: None,
            status: 200,
            retry_after: None,
            usage: None,
            error: None,
        }
    }

    #[test]
    fn the_ring_drops_the_oldest_and_counts_them() {
        let mut journal = Journal::new(3);
        for seq in 1..=5 {
            journal.push(record(seq));
        }
        let all = journal.page(0, usize::MAX);
        assert_eq!(all.dropped, 2);
        let seqs: Vec<u64> = all.calls.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[test]
    fn pages_start_after_the_given_sequence_number() {
        let mut journal = Journal::new(10);
        for seq in 1..=6 {
            journal.push(record(seq));
        }
        let seqs = |page: CallsPage| page.calls.iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(seqs(journal.page(2, 2)), [3, 4]);
        assert_eq!(seqs(journal.page(4, 10)), [5, 6]);
        assert!(journal.page(6, 10).calls.is_empty());
    }

    #[test]
    fn header_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_HEADER_BYTES);
        let cut = header_text(long.as_bytes());
        assert!(cut.len() <= MAX_HEADER_BYTES && cut.len() >= MAX_HEADER_BYTES - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(header_text(b"abc"), "abc");
    }
}
