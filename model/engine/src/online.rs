//! Online training: the model trained from the sample rows `marnflow stream` emits within the
//! day (`features/stream_samples/dt=D/part-NNNNN.parquet`), warm-started from the `production`
//! version, and registered as a new version every N steps or minutes.
//!
//! - **Which rows.** Only parts the stream has recorded (in `_state/stream/progress.json`: every
//!   part of a day built, the first `open.parts` of the day open), so a part the stream may still
//!   write again after a stop is never trained. Only days after the last day the production
//!   version was trained on, or, for a production version trained online, the parts of its
//!   last day it had not seen.
//! - A failure (a non-finite loss, no production version yet) ends [`run_online`] with an
//!   error; `marnflow stream` logs it and starts it again from the saved state after a pause,
//!   without stopping the stream.
//! - **How.** Each part's rows in their order, in batches of `train.batch_size`, with the item
//!   side of the part's day (published when the stream opens the day). Each batch is scored by
//!   the model before its step: the **online AUC** is the AUC of the last
//!   [`AUC_WINDOW`] rows so scored, a progressive validation on rows the model had not seen.
//! - **Exactly once.** The trainer's state (weights, AdaGrad accumulators, the parts trained) is
//!   saved under `_state/online/<model>/` with each version registered. A stopped process
//!   restarts from it: parts trained after it are trained again from the same state, so none
//!   counts twice. A version's run key is the base version and the digests of the parts it
//!   has seen, so a stop between registering a version and saving the state registers nothing
//!   twice.
//! - A new `production` starts a new online state from it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use burn::module::Module;
use chrono::NaiveDate;
use marnflow_model::{metrics, MarnConfig, ModelInputs, Trainer};
use marnflow_pipeline::intraday::{part_index, STREAM_SAMPLES};
use marnflow_pipeline::lake::{partition, partition_day, Lake};
use marnflow_pipeline::stream::{read_progress, Progress};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::config::TrainSection;
use crate::data::{self, DataSpec, FileDigest, ItemStore, RowReader, Slice, Vocab};
use crate::training::{
    init_model, load_version, register_version, registry, save_trainer, training_record, TrainRequest, TrainingRecord,
};

/// Where each model's online state is kept.
pub const ONLINE_STATE: &str = "_state/online";
/// Rows the online AUC is computed over.
pub const AUC_WINDOW: usize = 20_000;

/// How the online trainer runs.
#[derive(Debug, Clone)]
pub struct OnlineOptions {
    /// The model: warm-started from `<model>@production`, its versions registered under it.
    pub model: String,
    /// Register a version after this many steps since the last one…
    pub every_steps: u64,
    /// …or this long since the last one (whichever comes first), if any step was taken.
    pub every: Duration,
    /// How often the lake is looked at for new parts.
    pub poll: Duration,
    /// Train the parts recorded now, register what was trained, and return.
    pub once: bool,
    pub settings: TrainSection,
}

/// The online state saved with each version (`_state/online/<model>/state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnlineState {
    /// The version trained from, `NAME@vN`.
    pub base: String,
    /// The model's config and inputs (to rebuild it before its weights are loaded).
    pub config: MarnConfig,
    pub inputs: ModelInputs,
    /// Parts trained, in order: path, digest, rows.
    pub parts: Vec<FileDigest>,
    pub steps: u64,
    pub samples: u64,
    pub seconds: f64,
    /// The last version registered.
    pub registered: Option<u32>,
    pub weights: String,
    pub optimizer: String,
}

/// One part trained, and the version registered after it, if any.
#[derive(Debug, Clone, Serialize)]
pub struct OnlineReport {
    pub date: String,
    pub part: u32,
    pub rows: u64,
    pub steps: u64,
    pub seconds: f64,
    pub samples_per_second: f64,
    /// AUC of the model on the last [`AUC_WINDOW`] rows, each scored before it was trained on.
    pub online_auc: Option<f64>,
    pub loss: f32,
    /// Parts recorded by the stream and not trained yet, after this one.
    pub parts_waiting: usize,
    pub base: String,
    pub registered: Option<u32>,
}

/// A part the stream has recorded: its day, index and path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Part {
    day: NaiveDate,
    index: u32,
    path: String,
}

/// The parts of days from `from` on the stream has recorded, in order.
async fn recorded_parts(lake: &Lake, progress: &Progress, from: NaiveDate) -> Result<Vec<Part>> {
    let last_built = progress.last_day.as_deref().and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
    let open =
        progress.open.as_ref().and_then(|o| Some((NaiveDate::parse_from_str(&o.day, "%Y-%m-%d").ok()?, o.parts)));
    let mut out = Vec::new();
    // Only the days from `from` on are listed (the table grows by a day's parts every day).
    for meta in lake.list_after(STREAM_SAMPLES, &partition(STREAM_SAMPLES, &from.to_string())).await? {
        let Some(path) = lake.relative(&meta.location) else { continue };
        let Some(day) = partition_day(&path) else { continue };
        let Some(index) = part_index(&path) else { continue };
        let recorded = last_built.is_some_and(|b| day <= b) || open.is_some_and(|(d, n)| d == day && index < n);
        if day >= from && recorded {
            out.push(Part { day, index, path });
        }
    }
    out.sort();
    Ok(out)
}

fn state_dir(model: &str) -> String {
    format!("{ONLINE_STATE}/{model}")
}

async fn read_state(lake: &Lake, model: &str) -> Result<Option<OnlineState>> {
    let rel = format!("{}/state.json", state_dir(model));
    match lake.get_opt(&rel).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{}: not an online state; move it away to start online training afresh from production",
                lake.file_url(&rel)
            )
        }),
    }
}

/// Saves the trainer's state and the online state pointing at it ([`save_trainer`]).
async fn save_state(lake: &Lake, model: &str, trainer: &Trainer, state: &mut OnlineState) -> Result<()> {
    let before = read_state(lake, model).await.ok().flatten().map(|b| (b.weights, b.optimizer));
    save_trainer(lake, &state_dir(model), trainer, state.steps, before, |weights, optimizer| {
        state.weights = weights.to_string();
        state.optimizer = optimizer.to_string();
        Ok(serde_json::to_vec_pretty(&*state)?)
    })
    .await?;
    Ok(())
}

/// The run key of the online model after `state.parts`: its base and what it was trained on.
fn run_key(state: &OnlineState) -> String {
    let mut text = format!("online\n{}\n", state.base);
    for p in &state.parts {
        text.push_str(&format!("{} {} {}\n", p.path, p.sha256, p.rows));
    }
    marnflow_registry::sha256_hex(text.as_bytes())
}

/// The online trainer: the model, its data settings, and what it has done.
struct Online {
    name: String,
    base_version: u32,
    trainer: Trainer,
    state: OnlineState,
    vocab: Vocab,
    spec: DataSpec,
    /// Parts the base version was trained on already (an online version promoted to production).
    base_parts: std::collections::HashSet<String>,
    /// The item side of the day being trained, as day index 0.
    stores: std::collections::HashMap<u16, Arc<ItemStore>>,
    store_day: Option<NaiveDate>,
    recent: VecDeque<(f32, f32)>,
    steps_since: u64,
    since: Instant,
    settings: TrainSection,
}

impl Online {
    /// From the saved state when it was trained from today's production, else afresh from it.
    /// Returns it with the first day to train: the day after the base's last training day, or
    /// that day itself when the base was trained online (its record lists the parts it saw).
    async fn start(lake: &Lake, opts: &OnlineOptions) -> Result<(Self, NaiveDate)> {
        let registry = registry(lake);
        let production = format!("{}@production", opts.model);
        let (name, version) = registry.resolve(&production).await.with_context(|| {
            format!("online training starts from {production}: train and promote a version first (`marnflow run`, or `marnflow train` and `marnflow models promote`)")
        })?;
        let base = format!("{name}@v{version}");
        let (_, files) = load_version(lake, &base).await?;
        let record = training_record(&files)?
            .ok_or_else(|| anyhow!("{base} has no training record: it cannot be trained online"))?;
        let after = NaiveDate::parse_from_str(&record.to, "%Y-%m-%d")
            .with_context(|| format!("{base}: its last training day {:?}", record.to))?;
        let base_parts: std::collections::HashSet<String> =
            record.partitions.iter().filter(|p| p.path.starts_with(STREAM_SAMPLES)).map(|p| p.path.clone()).collect();
        let first = if base_parts.is_empty() { after + chrono::Duration::days(1) } else { after };
        let vocab = Vocab::load(lake).await?;
        let settings = opts.settings.clone();
        let device = settings.device.device()?;
        device.seed(settings.seed);
        let autodiff = device.clone().autodiff();
        let (trainer, state) = match read_state(lake, &opts.model).await?.filter(|s| s.base == base) {
            Some(s) => {
                let dir = state_dir(&opts.model);
                let model = s.config.init(&s.inputs, &autodiff)?;
                let weights = lake.get(&format!("{dir}/{}", s.weights)).await?.to_vec();
                let optimizer = lake.get(&format!("{dir}/{}", s.optimizer)).await?.to_vec();
                info!(base, parts = s.parts.len(), steps = s.steps, "online training resumes from its saved state");
                (Trainer::restore(model, weights, optimizer, settings.optimizer.clone())?, s)
            }
            None => {
                let spec = DataSpec::discover(lake, &vocab, after).await?;
                let variant = marnflow_model::checkpoint::from_files(&files, &device)?.variant();
                let config = settings.model_config(variant);
                let req = TrainRequest {
                    model: opts.model.clone(),
                    from: after,
                    to: after,
                    variant,
                    settings: settings.clone(),
                    warm_start: Some(base.clone()),
                    resume: false,
                    slices: BTreeMap::new(),
                    progress: false,
                    replicas: None,
                };
                let model = init_model(lake, &req, &spec, &vocab, &config, Some(&(name.clone(), version))).await?;
                let state = OnlineState {
                    base: base.clone(),
                    config: model.config().clone(),
                    inputs: model.inputs().clone(),
                    parts: Vec::new(),
                    steps: 0,
                    samples: 0,
                    seconds: 0.0,
                    registered: None,
                    weights: String::new(),
                    optimizer: String::new(),
                };
                info!(base, after = %after, "online training starts from production");
                (Trainer::new(model, settings.optimizer.clone())?, state)
            }
        };
        let spec = DataSpec { inputs: state.inputs.clone(), stat_columns: record.spec.stat_columns.clone() };
        let online = Online {
            name,
            base_version: version,
            base_parts,
            trainer,
            state,
            vocab,
            spec,
            stores: std::collections::HashMap::new(),
            store_day: None,
            recent: VecDeque::new(),
            steps_since: 0,
            since: Instant::now(),
            settings,
        };
        Ok((online, first))
    }

    /// Trains one part: its rows in order, each batch scored before its step.
    async fn train_part(&mut self, lake: &Lake, part: &Part) -> Result<(u64, f64, f32)> {
        let started = Instant::now();
        if self.store_day != Some(part.day) {
            let store = ItemStore::load(lake, part.day, &self.spec, &self.vocab, None).await?;
            self.stores = std::collections::HashMap::from([(0u16, Arc::new(store))]);
            self.store_day = Some(part.day);
        }
        let bytes = lake.get(&part.path).await?;
        let digest = FileDigest { path: part.path.clone(), sha256: marnflow_registry::sha256_hex(&bytes), rows: 0 };
        let mut rows = Vec::new();
        let reader = RowReader { vocab: &self.vocab, inputs: &self.spec.inputs, slice: Slice::All, keep_keys: false };
        for b in data::parquet_batches(bytes, &part.path)? {
            data::rows_of(reader, &b, 0, &part.path, &mut rows)?;
        }
        let builder = data::BatchBuilder { inputs: &self.spec.inputs, stores: &self.stores };
        let mut loss = 0.0;
        for chunk in rows.chunks(self.settings.batch_size.max(1)) {
            let refs: Vec<&data::Row> = chunk.iter().collect();
            let batch = builder.build(&refs, None)?;
            // Online: the adversarial schedule at its end.
            let (losses, scores) = self.trainer.step_scored(&batch, 1.0)?;
            anyhow::ensure!(
                losses.total.is_finite(),
                "the online loss became {} on {}: lower train.learning_rate",
                losses.total,
                part.path
            );
            loss = losses.ctr;
            self.recent.extend(scores.iter().copied().zip(chunk.iter().map(|r| r.label)));
            while self.recent.len() > AUC_WINDOW {
                self.recent.pop_front();
            }
            self.state.steps += 1;
            self.steps_since += 1;
        }
        let n = rows.len() as u64;
        self.state.samples += n;
        let seconds = started.elapsed().as_secs_f64();
        self.state.seconds += seconds;
        self.state.parts.push(FileDigest { rows: n, ..digest });
        Ok((n, seconds, loss))
    }

    fn online_auc(&self) -> Option<f64> {
        let (s, l): (Vec<f32>, Vec<f32>) = self.recent.iter().copied().unzip();
        metrics::auc(&s, &l).ok().flatten()
    }

    /// Registers the model as a version (unless this exact one is), then saves the state.
    async fn register(&mut self, lake: &Lake) -> Result<u32> {
        let registry = registry(lake);
        let run_key = run_key(&self.state);
        let existing = registry.versions(&self.name).await?.into_iter().find(|m| m.metadata.run_key == run_key);
        let version = match existing {
            Some(m) => m.version,
            None => {
                let model = self.trainer.model()?.valid();
                let days: Vec<NaiveDate> = self.state.parts.iter().filter_map(|p| partition_day(&p.path)).collect();
                let record = TrainingRecord {
                    run_key,
                    variant: model.variant().as_str().to_string(),
                    from: days.first().map(|d| d.to_string()).unwrap_or_default(),
                    to: days.last().map(|d| d.to_string()).unwrap_or_default(),
                    partitions: self.state.parts.clone(),
                    spec: self.spec.clone(),
                    settings: self.settings.clone(),
                    warm_start: Some(self.state.base.clone()),
                    samples: self.state.samples,
                    steps: self.state.steps,
                    seconds: self.state.seconds,
                    samples_per_second: self.state.samples as f64 / self.state.seconds.max(1e-9),
                    modalities: model.modalities().iter().map(|m| format!("{m:?}").to_lowercase()).collect(),
                    curve: Vec::new(),
                };
                let slices = vec![("online".to_string(), "rows emitted within the day".to_string())];
                register_version(lake, &registry, &self.name, &model, &record, slices, Some(self.base_version))
                    .await?
                    .version
            }
        };
        self.state.registered = Some(version);
        save_state(lake, &self.name, &self.trainer, &mut self.state).await?;
        self.steps_since = 0;
        self.since = Instant::now();
        Ok(version)
    }
}

/// Runs online training (see the module docs); calls `on_report` after each part trained.
pub async fn run_online(lake: &Lake, opts: &OnlineOptions, mut on_report: impl FnMut(&OnlineReport)) -> Result<u64> {
    let (mut online, first) = Online::start(lake, opts).await?;
    let mut trained = 0u64;
    loop {
        let progress = read_progress(lake).await?;
        let mut done: std::collections::HashSet<&str> = online.state.parts.iter().map(|p| p.path.as_str()).collect();
        done.extend(online.base_parts.iter().map(String::as_str));
        let waiting: Vec<Part> = recorded_parts(lake, &progress, first)
            .await?
            .into_iter()
            .filter(|p| !done.contains(p.path.as_str()))
            .collect();
        for (i, part) in waiting.iter().enumerate() {
            let (rows, seconds, loss) = online.train_part(lake, part).await?;
            trained += 1;
            let due = online.steps_since >= opts.every_steps || online.since.elapsed() >= opts.every;
            let last = opts.once && i + 1 == waiting.len();
            let registered =
                if online.steps_since > 0 && (due || last) { Some(online.register(lake).await?) } else { None };
            let report = OnlineReport {
                date: part.day.to_string(),
                part: part.index,
                rows,
                steps: online.state.steps,
                seconds,
                samples_per_second: rows as f64 / seconds.max(1e-9),
                online_auc: online.online_auc(),
                loss,
                parts_waiting: waiting.len() - i - 1,
                base: online.state.base.clone(),
                registered,
            };
            info!(
                day = report.date,
                part = report.part,
                rows,
                samples_per_second = report.samples_per_second.round(),
                online_auc = report.online_auc,
                registered = report.registered,
                "part trained"
            );
            on_report(&report);
        }
        if opts.once {
            return Ok(trained);
        }
        if online.steps_since > 0 && online.since.elapsed() >= opts.every {
            let version = online.register(lake).await?;
            info!(version, "online version registered (time)");
        }
        tokio::time::sleep(opts.poll).await;
    }
}
