//! Training throughput (forward + backward + AdaGrad step, the batch's tensors built ahead as
//! the trainer's reader thread builds them) of every variant on synthetic
//! Zipf-popular batches, the backend's large-matmul GFLOP/s, the model's achieved GFLOP/s, the
//! speed-up of computing each distinct item once, and peak memory. Prints Markdown tables.
//!
//! `cargo bench --workspace --bench train_throughput [-- --quick] [-- --device cpu|tch:cpu|cuda:0]`
//! (`--workspace`, not `-p`: with `-p` cargo unifies features differently and rebuilds burn.)
//! Environment: `BENCH_SECONDS` (per case, default 3), `BENCH_BATCHES` (default `32,1024`),
//! `BENCH_VARIANTS` (comma-separated, default all), `BENCH_DENSE_EMBEDDINGS=1` (AdaGrad over every
//! row of the embedding tables instead of the rows a batch read).
//!
//! Options: `--image-dim N` and `--word-dim N` (default 512 and 64; the paper's widths are 4096
//! and 300), `--matmul-n N` (default 1024; 0 skips the matmul measurement, which otherwise runs
//! for a case's budget first and fills a profile of the steps with its own products),
//! `--peak-gflops X` (a reference peak, such as a GPU's bf16 peak, for an extra "% of peak"
//! column), `--no-dedup` (skip the distinct-vs-per-slot table), `--json PATH` (every case also
//! written as JSON; `ops/gpu-check.sh` reads it),
//! `--bf16-matmul` (also time the matmul in bf16, the peak a GPU's tensor cores give), `--phases`
//! (a table of where each case's step time goes: the batch's move to the device, the forward
//! pass, the whole step), `--resident-images` (the batch's images wait on the device as a table,
//! and the batch sends row indices: `train.images_on_device`), `--precision bf16` (the linear
//! layers' products in bfloat16: `train.model.precision`).

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::{Device, Distribution, FloatDType, Tensor};
use marnflow_model::device::parse_device;
use marnflow_model::synthetic::SyntheticSpec;
use marnflow_model::{
    Batch, BatchTensors, MarnConfig, ModelInputs, Precision, ResidentImages, TrainConfig, Trainer, Variant,
};

const SEQ_LEN: usize = 50;

/// The item side's widths: the image vector and the title words.
#[derive(Clone, Copy)]
struct Widths {
    image_dim: usize,
    word_dim: usize,
}

fn world(batch_size: usize, dedup: bool, seed: u64, w: Widths) -> SyntheticSpec {
    SyntheticSpec {
        batch_size,
        max_seq_len: SEQ_LEN,
        full_length: true,
        n_items: 200_000,
        n_categories: 1_000,
        n_shops: 20_000,
        n_brands: 10_000,
        n_stats: 4,
        image_dim: w.image_dim,
        title_vocab: 20_000,
        word_dim: w.word_dim,
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
    params: usize,
}

/// The batch a case steps on: its images carried in it, or (`--resident-images`) waiting on the
/// device as a table the batch's rows index; and the model's product precision.
#[derive(Clone, Copy)]
struct Input<'a> {
    batch: &'a Batch,
    resident: bool,
    precision: Precision,
}

impl Input<'_> {
    /// The batch to step on, and the image table on `device` it indexes (`--resident-images`).
    fn split(&self, inputs: &ModelInputs, device: &Device) -> (Batch, Option<ResidentImages>) {
        if !self.resident || !inputs.has_images() {
            return (self.batch.clone(), None);
        }
        let (by_rows, table) = ResidentImages::from_batch(self.batch, inputs.image_dim, device).expect("images");
        (by_rows, Some(table))
    }

    /// The batch to step on, and its tensors on `device`.
    fn tensors(&self, inputs: &ModelInputs, device: &Device) -> (Batch, BatchTensors) {
        let (batch, table) = self.split(inputs, device);
        let x = BatchTensors::with_images(&batch, inputs, device, table.as_ref()).expect("tensors");
        (batch, x)
    }
}

fn run_case(variant: Variant, input: Input<'_>, inputs: &ModelInputs, device: &Device, budget: Duration) -> Case {
    let config = MarnConfig { variant, precision: input.precision, ..MarnConfig::default() };
    let model = config.init(inputs, device).expect("model builds");
    let params = model.num_params();
    // `BENCH_DENSE_EMBEDDINGS=1`: AdaGrad over every row of every table, as before row-wise
    // updates (for the before/after comparison).
    let dense = std::env::var("BENCH_DENSE_EMBEDDINGS").is_ok_and(|v| v == "1");
    let train = TrainConfig { sparse_embeddings: !dense, ..TrainConfig::default() };
    let mut trainer = Trainer::new(model, train).expect("trainer");
    let _ = peak_rss_mib();
    // The batch's tensors are built once, ahead of the steps, as `marnflow train`'s reader
    // thread builds each batch's while the trainer steps on the one before.
    let (batch, x) = input.tensors(inputs, device);
    let mut step = || trainer.step_scored_with(&batch, Some(x.clone()), 0.5).expect("step");
    step(); // warm-up (lazy init, allocations)
    let start = Instant::now();
    let mut steps = 0usize;
    while steps < 2 || start.elapsed() < budget {
        step();
        steps += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let step_s = secs / steps as f64;
    Case {
        samples_per_s: batch.len() as f64 / step_s,
        step_ms: step_s * 1e3,
        gflops: train_flops(&config, inputs, &batch).map(|f| f / step_s / 1e9),
        distinct: batch.n_items(),
        peak_mib: peak_rss_mib(),
        params,
    }
}

/// GFLOP/s of an `n`-cube matrix product in `dtype`. The products are queued back to back and
/// read back once at the end, so a GPU's copy to the host is not timed with them.
fn matmul_gflops(device: &Device, n: usize, dtype: FloatDType, budget: Duration) -> f64 {
    let a = Tensor::<2>::random([n, n], Distribution::Default, device).cast(dtype);
    let b = Tensor::<2>::random([n, n], Distribution::Default, device).cast(dtype);
    let sync = |t: Tensor<2>| {
        let _ = t.sum().into_data();
    };
    sync(a.clone().matmul(b.clone())); // warm-up
    let start = Instant::now();
    let mut reps = 0usize;
    let mut batch = 1usize;
    while reps < 2 || start.elapsed() < budget {
        let mut last = None;
        for _ in 0..batch {
            last = Some(a.clone().matmul(b.clone()));
        }
        if let Some(t) = last {
            sync(t);
        }
        reps += batch;
        batch = (batch * 2).min(64);
    }
    2.0 * (n as f64).powi(3) * reps as f64 / start.elapsed().as_secs_f64() / 1e9
}

/// Where a training step's time goes, each phase run alone and read back before the clock
/// stops: moving the batch to the device (done ahead of the step, on `marnflow train`'s reader
/// thread), the forward pass without autodiff (what scoring costs), and the whole step (forward
/// + backward + AdaGrad on tensors already on the device, as in [`run_case`]).
struct Phases {
    tensors_ms: f64,
    forward_ms: f64,
    step_ms: f64,
}

fn phases(variant: Variant, input: Input<'_>, inputs: &ModelInputs, plain: &Device, budget: Duration) -> Phases {
    let config = MarnConfig { variant, precision: input.precision, ..MarnConfig::default() };
    let model = config.init(inputs, plain).expect("model builds");
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        let start = Instant::now();
        let mut reps = 0usize;
        while reps < 3 || start.elapsed() < budget / 3 {
            f();
            reps += 1;
        }
        start.elapsed().as_secs_f64() * 1e3 / reps as f64
    };
    // The image table moves once per run, not per batch: built outside the clock.
    let (batch, table) = input.split(inputs, plain);
    let tensors_ms = time(&|| {
        let x = BatchTensors::with_images(&batch, inputs, plain, table.as_ref()).expect("tensors");
        let _ = x.labels.sum().into_data();
        if let Some(images) = x.images {
            let _ = images.sum().into_data();
        }
    });
    let x = BatchTensors::with_images(&batch, inputs, plain, table.as_ref()).expect("tensors");
    let forward_ms = time(&|| {
        let out = model.forward(&x).expect("forward");
        let _ = out.logits.sum().into_data();
    });
    let step_ms = run_case(variant, input, inputs, &plain.clone().autodiff(), budget / 3).step_ms;
    Phases { tensors_ms, forward_ms, step_ms }
}

/// The value after `--name`, if the flag is given.
fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A numeric flag, if given; a value that does not parse stops the benchmark with its name.
fn parsed<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    flag(args, name).map(|v| {
        v.parse().unwrap_or_else(|_| {
            eprintln!("train_throughput: {name} {v:?} is not a number");
            std::process::exit(2)
        })
    })
}

/// A numeric flag, or `default`.
fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    parsed(args, name).unwrap_or(default)
}

fn main() {
    marnflow_model::device::restart_with_retaining_malloc();
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let device_name = flag(&args, "--device").unwrap_or_else(|| "cpu".into());
    let widths =
        Widths { image_dim: number(&args, "--image-dim", 512usize), word_dim: number(&args, "--word-dim", 64usize) };
    let matmul_n: usize = number(&args, "--matmul-n", 1024);
    let reference_peak: Option<f64> = parsed(&args, "--peak-gflops");
    let json_path = flag(&args, "--json");
    let resident = args.iter().any(|a| a == "--resident-images");
    let precision = match flag(&args, "--precision").as_deref() {
        None | Some("f32") => Precision::F32,
        Some("bf16") => Precision::Bf16,
        Some(other) => {
            eprintln!("train_throughput: --precision {other:?}: expected f32 or bf16");
            std::process::exit(2)
        }
    };
    let mut records: Vec<serde_json::Value> = Vec::new();
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
    let (image_dim, word_dim) = (widths.image_dim, widths.word_dim);
    println!(
        "device `{device_name}`, T = {SEQ_LEN} (every sequence full), default model widths, \
         synthetic Zipf(1.0) items over 200k ids, image {image_dim}-d, titles <= 16 words of {word_dim}-d \
         vectors, 4 statistics; {seconds} s per case after one warm-up step; products in {}{}\n",
        format!("{precision:?}").to_lowercase(),
        if resident { "; images resident on the device" } else { "" }
    );
    let peak = (matmul_n > 0).then(|| matmul_gflops(&plain, matmul_n, FloatDType::F32, budget));
    match peak {
        Some(peak) => println!("backend matmul {matmul_n}x{matmul_n}x{matmul_n} (f32): **{peak:.1} GFLOP/s**\n"),
        None => println!("backend matmul: not measured (--matmul-n 0)\n"),
    }
    let bf16_peak = (matmul_n > 0 && args.iter().any(|a| a == "--bf16-matmul")).then(|| {
        let g = matmul_gflops(&plain, matmul_n, FloatDType::BF16, budget);
        println!("backend matmul {matmul_n}x{matmul_n}x{matmul_n} (bf16): **{g:.1} GFLOP/s**\n");
        g
    });
    let peak_header = reference_peak.map_or(String::new(), |p| format!(" % of {:.0} TFLOP/s |", p / 1e3));
    println!(
        "| variant | batch | distinct items / slots | step ms | samples/s | est. GFLOP/s | % of matmul |{peak_header} peak RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|{}---:|", if reference_peak.is_some() { "---:|" } else { "" });
    for &bsz in &batches {
        let spec = world(bsz, true, 42, widths);
        let batch = spec.batch().expect("batch");
        let inputs = spec.inputs();
        let slots = bsz * (SEQ_LEN + 1);
        for &v in &variants {
            let c = run_case(v, Input { batch: &batch, resident, precision }, &inputs, &device, budget);
            let of_peak = reference_peak.map_or(String::new(), |p| {
                format!(" {} |", c.gflops.map_or("–".into(), |g| format!("{:.2}%", 100.0 * g / p)))
            });
            println!(
                "| {v} | {bsz} | {} / {slots} | {:.1} | {:.0} | {} | {} |{of_peak} {} |",
                c.distinct,
                c.step_ms,
                c.samples_per_s,
                c.gflops.map_or("–".into(), |g| format!("{g:.2}")),
                c.gflops.zip(peak).map_or("–".into(), |(g, peak)| format!("{:.1}%", 100.0 * g / peak)),
                c.peak_mib.map_or("?".into(), |m| format!("{m:.0}")),
            );
            records.push(serde_json::json!({
                "variant": v.to_string(),
                "batch": bsz,
                "image_dim": image_dim,
                "word_dim": word_dim,
                "distinct_items": c.distinct,
                "params": c.params,
                "slots": slots,
                "step_ms": c.step_ms,
                "samples_per_s": c.samples_per_s,
                "est_gflops": c.gflops,
                "share_of_matmul": c.gflops.zip(peak).map(|(g, peak)| g / peak),
                "share_of_reference_peak": reference_peak.and_then(|p| c.gflops.map(|g| g / p)),
                "peak_rss_mib": c.peak_mib,
            }));
        }
    }
    let write_json = |records: &[serde_json::Value], phases: &[serde_json::Value]| {
        if let Some(path) = &json_path {
            let doc = serde_json::json!({
                "device": device_name,
                "seq_len": SEQ_LEN,
                "seconds_per_case": seconds,
                "matmul_n": matmul_n,
                "resident_images": resident,
                "precision": format!("{precision:?}").to_lowercase(),
                "matmul_gflops": peak,
                "matmul_bf16_gflops": bf16_peak,
                "reference_peak_gflops": reference_peak,
                "cases": records,
                "phases": phases,
            });
            let text = serde_json::to_string_pretty(&doc).expect("JSON");
            if let Err(e) = std::fs::write(path, text) {
                eprintln!("train_throughput: cannot write {path}: {e}");
                std::process::exit(1);
            }
        }
    };
    write_json(&records, &[]);
    if args.iter().any(|a| a == "--phases") {
        println!("\n## Where the step time goes\n");
        println!("| variant | batch | batch to device ms (ahead of the step) | forward ms (no autodiff) | step ms | rest of the step (backward + AdaGrad) ms |");
        println!("|---|---:|---:|---:|---:|---:|");
        let mut rows = Vec::new();
        for &bsz in &batches {
            let spec = world(bsz, true, 42, widths);
            let batch = spec.batch().expect("batch");
            let inputs = spec.inputs();
            for &v in &variants {
                let p = phases(v, Input { batch: &batch, resident, precision }, &inputs, &plain, budget);
                let rest = p.step_ms - p.forward_ms;
                println!("| {v} | {bsz} | {:.1} | {:.1} | {:.1} | {rest:.1} |", p.tensors_ms, p.forward_ms, p.step_ms);
                rows.push(serde_json::json!({
                    "variant": v.to_string(), "batch": bsz, "tensors_ms": p.tensors_ms,
                    "forward_ms": p.forward_ms, "step_ms": p.step_ms, "rest_ms": rest,
                }));
            }
        }
        write_json(&records, &rows);
    }
    if args.iter().any(|a| a == "--no-dedup") {
        return;
    }

    println!("\n## Distinct-item computation vs per-slot computation (same samples)\n");
    println!("| variant | batch | rows computed (distinct / per slot) | samples/s distinct | samples/s per slot | speed-up |");
    println!("|---|---:|---:|---:|---:|---:|");
    let bsz = *batches.last().unwrap_or(&1024);
    let dedup_spec = world(bsz, true, 42, widths);
    let inputs = dedup_spec.inputs();
    let dedup = dedup_spec.batch().expect("batch");
    let per_slot = world(bsz, false, 42, widths).batch().expect("batch");
    for v in [Variant::Marn, Variant::Conc] {
        if !variants.contains(&v) {
            continue;
        }
        let a = run_case(v, Input { batch: &dedup, resident, precision }, &inputs, &device, budget);
        let b = run_case(v, Input { batch: &per_slot, resident, precision }, &inputs, &device, budget);
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
