//! dhat as the global allocator, profiling the churn that `router`'s `profile_churn`
//! profiles with `region::profile` (see `benches/compare.py`): a `dhat::Profiler` per
//! iteration, with dhat's default settings, which writes its file when dropped.

use criterion::{criterion_group, criterion_main};

mod workloads;

#[global_allocator]
static DHAT: dhat::Alloc = dhat::Alloc;

fn benches(c: &mut criterion::Criterion) {
    let file =
        std::env::temp_dir().join(format!("stratalloc-bench-dhat-{}.json", std::process::id()));
    let mut group = workloads::profile_churn_group(c);
    group.bench_function("dhat", |b| {
        b.iter(|| {
            let _profiler = dhat::Profiler::builder().file_name(&file).build();
            workloads::churn(workloads::PROFILE_CHURN_STEPS)
        })
    });
    group.finish();
    let _ = std::fs::remove_file(&file);
}

criterion_group!(dhat_benches, benches);
criterion_main!(dhat_benches);
