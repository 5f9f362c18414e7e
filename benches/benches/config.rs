//! Parsing and validating configuration files.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use orchestrator::config::{Level, ValidateOptions, validate};

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/configs")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn config(c: &mut Criterion) {
    let mut group = c.benchmark_group("config");
    for (name, level) in [
        ("valid/full.yaml", Level::Strict),
        ("valid/minimal.yaml", Level::Strict),
    ] {
        let bytes = fixture(name);
        let options = ValidateOptions {
            level,
            ..ValidateOptions::default()
        };
        assert!(
            validate(&bytes, &options).config.is_some(),
            "{name} must be valid"
        );
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("validate/{name}"), |b| {
            b.iter(|| validate(black_box(&bytes), &options))
        });
    }
    group.finish();
}

criterion_group!(benches, config);
criterion_main!(benches);
