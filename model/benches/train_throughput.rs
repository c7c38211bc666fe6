//! Training throughput (forward + backward + AdaGrad step) of every variant on synthetic
//! Zipf-popular batches, the backend's large-matmul GFLOP/s, the model's achieved GFLOP/s, the
//! speed-up of computing each distinct item once, and peak memory. Prints Markdown tables.
//!
//! `cargo bench --workspace --bench train_throughput [-- --quick] [-- --device cpu|tch:cpu|cuda:0]`
//! (`--workspace`, not `-p`: with `-p` cargo unifies features differently and rebuilds burn.)
//! Environment: `BENCH_SECONDS` (per case, default 3), `BENCH_BATCHES` (default `32,1024`),
//! `BENCH_VARIANTS` (comma-separated, default all).

use std::time::{Duration, Instant};

use burn::tensor::{Device, Distribution, Tensor};
use marnflow_model::device::parse_device;
use marnflow_model::synthetic::SyntheticSpec;
use marnflow_model::{Batch, MarnConfig, ModelInputs, TrainConfig, Trainer, Variant};

const SEQ_LEN: usize = 50;

fn world(batch_size: usize, dedup: bool, seed: u64) -> SyntheticSpec {
    SyntheticSpec {
        batch_size,
        max_seq_len: SEQ_LEN,
        full_length: true,
        n_items: 200_000,
        n_categories: 1_000,
        n_shops: 20_000,
        n_brands: 10_000,
        n_stats: 4,
        image_dim: 512,
        title_vocab: 20_000,
        word_dim: 64,
        max_title_len: 16,
        zipf_exponent: 1.0,
        dedup,
        seed,
    }
}

/// Peak resident memory since the last reset, in MiB (Linux), resetting it afterwards.
fn peak_rss_mib() -> Option<f64> {
    let peak = marnflow_model::device::peak_rss_mib();
    marnflow_model::device::reset_peak_rss();
    peak.is_finite().then_some(peak)
}

/// Multiply-accumulates of one training forward pass, counted over the matrix products that
/// dominate (embedding lookups and element-wise work are ignored); FLOPs = 2 x MACs x 3 for
/// forward + backward. `None` for the baselines whose layers this count does not model.
fn train_flops(config: &MarnConfig, inputs: &ModelInputs, batch: &Batch) -> Option<f64> {
    let v = config.variant;
    if matches!(v, Variant::XDeepFm | Variant::Dupn | Variant::Dien | Variant::Dmf | Variant::Mmss | Variant::Naml) {
        return None;
    }
    let n = batch.n_items() as f64;
    let b = batch.len() as f64;
    let t = batch.seq_len() as f64;
    let e = config.embedding.modality_dim as f64;
    let h = config.representation_dim as f64;
    let g = config.gru_dim as f64;
    let a = config.attention_dim as f64;
    let ec = &config.embedding;
    let mods = config.modalities(inputs);
    let m = mods.len() as f64;
    let mut macs = 0.0;
    if matches!(v, Variant::Lr | Variant::Fm) {
        return Some(2.0 * 3.0 * b * (t + 5.0) * config.fm_dim as f64);
    }
    use marnflow_model::Modality::*;
    for md in &mods {
        macs += n
            * e
            * match md {
                Ids => (ec.item_dim + ec.shop_dim + ec.brand_dim + ec.category_dim) as f64,
                Image => inputs.image_dim as f64,
                Statistic => (2 * inputs.n_stats * ec.stat_dim) as f64,
                Title => {
                    let l = batch.items().titles.as_ref().map_or(4, |t| t.max_len.max(4)) as f64;
                    let conv: f64 = ec.title_windows.iter().map(|&w| w as f64 * (l - w as f64 + 1.0)).sum();
                    conv * inputs.word_dim as f64 * ec.title_filters as f64 / e
                        + (ec.title_filters * ec.title_windows.len()) as f64
                }
            };
    }
    match v {
        Variant::Maf => macs += n * m * (e * h + h * h),
        Variant::MafAdv => macs += n * m * (2.0 * e * h + h * h + h * m),
        Variant::MafDdma | Variant::Marn => macs += n * m * (3.0 * e * h + h * h + 3.0 * h * m),
        _ => macs += n * m * e * h,
    }
    let user = match v {
        Variant::YoutubeNet => h,
        Variant::Din => {
            macs += b * t * h * a + b * h * a + b * t * a;
            h
        }
        _ => {
            macs += n * h * 3.0 * g + b * t * g * 3.0 * g + b * t * g * a + b * h * a + b * t * a;
            if v == Variant::Marn {
                macs += b * t * ec.property_dim() as f64 * g;
            }
            g
        }
    };
    let mut width = user + h;
    for &l in &config.head_layers {
        macs += b * width * l as f64;
        width = l as f64;
    }
    macs += b * width;
    Some(2.0 * 3.0 * macs)
}

struct Case {
    samples_per_s: f64,
    step_ms: f64,
    gflops: Option<f64>,
    distinct: usize,
    peak_mib: Option<f64>,
}

fn run_case(variant: Variant, batch: &Batch, inputs: &ModelInputs, device: &Device, budget: Duration) -> Case {
    let config = MarnConfig { variant, ..MarnConfig::default() };
    let model = config.init(inputs, device).expect("model builds");
    let mut trainer = Trainer::new(model, TrainConfig::default()).expect("trainer");
    let _ = peak_rss_mib();
    trainer.step(batch, 0.5).expect("warm-up step"); // warm-up (lazy init, allocations)
    let start = Instant::now();
    let mut steps = 0usize;
    while steps < 2 || start.elapsed() < budget {
        trainer.step(batch, 0.5).expect("step");
        steps += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let step_s = secs / steps as f64;
    Case {
        samples_per_s: batch.len() as f64 / step_s,
        step_ms: step_s * 1e3,
        gflops: train_flops(&config, inputs, batch).map(|f| f / step_s / 1e9),
        distinct: batch.n_items(),
        peak_mib: peak_rss_mib(),
    }
}

fn matmul_gflops(device: &Device, n: usize, budget: Duration) -> f64 {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device);
    let _ = a.clone().matmul(b.clone()).into_data(); // warm-up
    let start = Instant::now();
    let mut reps = 0usize;
    while reps < 2 || start.elapsed() < budget {
        let _ = a.clone().matmul(b.clone()).into_data();
        reps += 1;
    }
    2.0 * (n as f64).powi(3) * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let device_name = args
        .iter()
        .position(|a| a == "--device")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "cpu".into());
    let plain = parse_device(&device_name).expect("device");
    let device = plain.clone().autodiff();
    plain.seed(1);
    let seconds: f64 =
        std::env::var("BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if quick { 1.0 } else { 3.0 });
    let budget = Duration::from_secs_f64(seconds);
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![32, 1024]);
    let variants: Vec<Variant> = std::env::var("BENCH_VARIANTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| Variant::ALL.to_vec());

    println!("# marnflow-model training throughput\n");
    println!(
        "device `{device_name}`, T = {SEQ_LEN} (every sequence full), default widths, \
         synthetic Zipf(1.0) items over 200k ids, image 512-d, titles <= 16 words of 64-d vectors, \
         4 statistics; {seconds} s per case after one warm-up step\n"
    );
    let peak = matmul_gflops(&plain, 1024, budget);
    println!("backend matmul 1024x1024x1024: **{peak:.1} GFLOP/s**\n");

    println!("| variant | batch | distinct items / slots | step ms | samples/s | est. GFLOP/s | % of matmul | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for &bsz in &batches {
        let spec = world(bsz, true, 42);
        let batch = spec.batch().expect("batch");
        let inputs = spec.inputs();
        let slots = bsz * (SEQ_LEN + 1);
        for &v in &variants {
            let c = run_case(v, &batch, &inputs, &device, budget);
            println!(
                "| {v} | {bsz} | {} / {slots} | {:.1} | {:.0} | {} | {} | {} |",
                c.distinct,
                c.step_ms,
                c.samples_per_s,
                c.gflops.map_or("–".into(), |g| format!("{g:.2}")),
                c.gflops.map_or("–".into(), |g| format!("{:.1}%", 100.0 * g / peak)),
                c.peak_mib.map_or("?".into(), |m| format!("{m:.0}")),
            );
        }
    }

    println!("\n## Distinct-item computation vs per-slot computation (same samples)\n");
    println!("| variant | batch | rows computed (distinct / per slot) | samples/s distinct | samples/s per slot | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    let bsz = *batches.last().unwrap_or(&1024);
    let dedup_spec = world(bsz, true, 42);
    let inputs = dedup_spec.inputs();
    let dedup = dedup_spec.batch().expect("batch");
    let per_slot = world(bsz, false, 42).batch().expect("batch");
    for v in [Variant::Marn, Variant::Conc] {
        if !variants.contains(&v) {
            continue;
        }
        let a = run_case(v, &dedup, &inputs, &device, budget);
        let b = run_case(v, &per_slot, &inputs, &device, budget);
        println!(
            "| {v} | {bsz} | {} / {} | {:.0} | {:.0} | {:.2}x |",
            a.distinct,
            b.distinct,
            a.samples_per_s,
            b.samples_per_s,
            a.samples_per_s / b.samples_per_s
        );
    }
}
