//! PII redaction throughput on mixed text, against a peer in the same run: a
//! naive sanitizer that runs `replace_all` with each of the same patterns in
//! turn, validating nothing (what a regex list in a logging filter does).
//! The README gives the ratio; absolute MB/s drift on a shared machine.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::pii::Redactor;

/// Lines with personal data, mixed into the benign corpus one in ten.
const PLANTED: &[&str] = &[
    "Refund ada.lovelace@example.com on card 4111 1111 1111 1111, SSN 123-45-6789.",
    "Call +44 20 7946 0958 or (555) 234-5678 about DE89 3704 0044 0532 0130 00.",
    "Client 93.184.215.14 (2606:4700:4700::1111, 00:1a:2b:3c:4d:5e) retried.",
    "DOB: 1984-03-12, passport no. X1234567, national id: 123-456-789.",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJlLXRlc3Q",
    "Connect to postgres://app:s3cretpw@db.internal:5432/orders with AKIAIOSFODNN7EXAMPLE.",
];

fn mixed_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/pii/benign.txt");
    let corpus = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut text = String::new();
    for (i, line) in corpus.lines().filter(|l| !l.starts_with('#')).enumerate() {
        if i % 10 == 0 {
            text.push_str(PLANTED[(i / 10) % PLANTED.len()]);
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn pii(c: &mut Criterion) {
    let text = mixed_text();
    let lines: Vec<&str> = text.lines().collect();
    let redactor = Redactor::default();
    let naive: Vec<regex::Regex> = redactor
        .patterns()
        .map(|p| regex::Regex::new(p).expect("the detector patterns compile"))
        .collect();
    assert!(
        redactor.redact(&text).len() != text.len(),
        "the mixed text holds PII"
    );
    let mut group = c.benchmark_group("pii");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("redact/mixed-text-whole", |b| {
        b.iter(|| redactor.redact(black_box(&text)).len())
    });
    // Log lines are redacted one at a time: the per-call cost shows here.
    group.bench_function("redact/mixed-text-by-line", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| redactor.redact(black_box(l)).len())
                .sum::<usize>()
        })
    });
    group.bench_function("peer/naive-replace-all-by-line", |b| {
        b.iter(|| {
            lines
                .iter()
                .map(|l| {
                    let mut out = std::borrow::Cow::Borrowed(black_box(*l));
                    for re in &naive {
                        if let std::borrow::Cow::Owned(s) = re.replace_all(&out, "[REDACTED]") {
                            out = std::borrow::Cow::Owned(s);
                        }
                    }
                    out.len()
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, pii);
criterion_main!(benches);
