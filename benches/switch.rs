//! Criterion: frontend -> switch -> backends over virtqueues in guest memory, one switch thread,
//! against an rtrb relay (producer -> ring -> relay thread -> ring -> consumer) carrying the same
//! messages. Switch / relay on CPU 1, every peer in one thread on CPU 0 (when there are two CPUs).
//! One-way counts messages; request/reply counts completed pairs (two forwarded messages each).
//! `vmq bench switch` prints the same cases as ratios; decision costs are in `benches/decision.rs`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmq::bench::switch::{self, Case, SwitchPlacement, SwitchRun};
use vmq::bench::Budget;

/// A harness run: `switch::run_vmq` or `switch::run_rtrb`.
type RunFn = fn(Case, u32, usize, Budget, SwitchPlacement) -> SwitchRun;

fn bench_switch(c: &mut Criterion) {
    let placement = SwitchPlacement::two_cores();
    for case in [Case::OneWay, Case::RequestReply] {
        let backends = case.default_backends();
        for size in switch::SIZES {
            let name = case.name().replace('/', "-");
            let mut g = c.benchmark_group(format!("switch/{name}/{size}B"));
            g.throughput(Throughput::Elements(1));
            g.measurement_time(Duration::from_secs(2));
            g.warm_up_time(Duration::from_millis(300));
            g.sample_size(10);
            let runs: [(&str, RunFn); 2] =
                [("vmq", switch::run_vmq), ("rtrb_relay", switch::run_rtrb)];
            for (label, run) in runs {
                g.bench_function(label, |b| {
                    b.iter_custom(|iters| {
                        let budget = Budget::Count(iters.max(1));
                        run(case, size, backends, budget, placement).run.elapsed
                    })
                });
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench_switch);
criterion_main!(benches);
