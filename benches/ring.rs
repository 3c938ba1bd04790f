//! Criterion: split ring in guest memory (driver thread -> device thread) against an rtrb SPSC
//! ring carrying the same messages, and a memcpy loop for 4 KiB. Producer pinned to CPU 0,
//! consumer to CPU 1 (when there are two CPUs). `vmq bench ring` prints the same cases as
//! ratios.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vmq::bench::{ring, Budget, Placement};

fn bench_ring(c: &mut Criterion) {
    let placement = Placement::two_cores();
    for size in ring::SIZES {
        let mut g = c.benchmark_group(format!("ring/{size}B"));
        g.throughput(Throughput::Elements(1));
        g.measurement_time(Duration::from_secs(2));
        g.warm_up_time(Duration::from_millis(300));
        g.sample_size(10);
        for batch in [1u32, 32, 256] {
            g.bench_with_input(BenchmarkId::new("vmq", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| {
                    ring::run_vmq(size, batch, Budget::Count(iters.max(1)), placement).elapsed
                })
            });
            g.bench_with_input(BenchmarkId::new("rtrb", batch), &batch, |b, &batch| {
                b.iter_custom(|iters| {
                    ring::run_rtrb(size, batch, Budget::Count(iters.max(1)), placement).elapsed
                })
            });
        }
        if size == 4096 {
            g.bench_function("memcpy", |b| {
                b.iter_custom(|iters| ring::run_memcpy(size, Budget::Count(iters.max(1))).elapsed)
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
