//! Cost of one balancing decision (`pick` + `on_sent`) per policy, at 4, 64 and 1024 backends.
//!
//! Single-threaded; candidates carry weights 1..=4 and a little load; one completion per decision
//! keeps in-flight counts bounded. Absolute figures drift on shared machines: compare policies
//! within one run.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmq::switch::policy::{bench_candidates, new_policy, PickRequest, PolicyConfig, PolicyKind};

fn decision(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("decision");
    g.throughput(Throughput::Elements(1));
    for kind in PolicyKind::ALL {
        for n in [4usize, 64, 1024] {
            let cfg = PolicyConfig {
                kind,
                ..PolicyConfig::default()
            };
            let mut p = new_policy(&cfg, n).expect("default policy configs are valid");
            let mut c = bench_candidates(n);
            let mut k = 0u32;
            let mut drain = 0usize;
            g.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                b.iter(|| {
                    k = k.wrapping_add(1);
                    let req = PickRequest {
                        class: 0,
                        key: k,
                        bytes: 512,
                    };
                    if let Some(i) = p.pick(black_box(&c), &req) {
                        p.on_sent(i, &req);
                        c[i].in_flight += 1;
                    }
                    if c[drain].in_flight > 0 {
                        c[drain].in_flight -= 1;
                    }
                    drain = if drain + 1 == n { 0 } else { drain + 1 };
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
