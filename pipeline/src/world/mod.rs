//! The synthetic e-commerce world behind `marnflow generate`.
//!
//! It writes the raw-log contract (`raw/…`) and the ground truth (`truth/…`): the true click
//! probability of every exposure, the planted item factors and the per-category modality weights.
//! The world holds what MARN is about (see [`latent`]): a factor shared by image and title,
//! image-only and title-only factors, a quality factor that shows in the statistics, an
//! idiosyncratic factor visible only through the item id, Zipf popularity, new items every day
//! (the last day included) and category-dependent modality weights.
//!
//! Output is a pure function of the configuration: the same seed and parameters give
//! byte-identical files. The world is written day by day in bounded batches; memory depends on
//! the number of users and items, never on the number of exposures.
//!
//! ```no_run
//! # async fn run() -> marnflow_pipeline::Result<()> {
//! use marnflow_pipeline::{lake::Lake, world::{generate, WorldConfig}};
//! let lake = Lake::open("./lake")?;
//! let cfg = WorldConfig { users: 100, items: 300, days: 3, image_dim: 16, ..Default::default() };
//! let summary = generate(&lake, &cfg, &mut |_day| {}).await?;
//! println!("Bayes-optimal AUC {:.3}", summary.bayes_auc.unwrap_or(f64::NAN));
//! # Ok(()) }
//! ```

pub mod latent;
pub mod sampling;
pub mod text;
pub mod writer;

use chrono::{Duration, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gumbel, Poisson};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, instrument};

use crate::contract;
use crate::error::{PipelineError, Result};
use crate::lake::{data_file, partition, write_parquet, Lake, PartitionWriter};
use latent::Latent;
use sampling::BinnedAuc;
use writer::{BehaviorRows, ClickRows, ExposureRows, ItemRows, TruthItemRows, TruthRows};

const DAY_MS: i64 = 86_400_000;

/// Parameters of a synthetic world (the `[generate]` section of the config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorldConfig {
    /// Number of users.
    pub users: usize,
    /// Number of items in the catalogue (over all days).
    pub items: usize,
    /// Number of days of logs.
    pub days: u32,
    /// First day, YYYY-MM-DD.
    pub start_date: String,
    /// Seed of every random draw.
    pub seed: u64,
    /// Width of the image embedding (VGG16 fc7 is 4096).
    pub image_dim: usize,
    /// Exposures per day (rounded up to whole slates).
    pub exposures_per_day: u64,
    /// Items shown per request.
    pub slate_size: u32,
    /// Number of categories, shops and brands.
    pub categories: usize,
    pub shops: usize,
    pub brands: usize,
    /// Title vocabulary size, number of title topics, word-vector width.
    pub vocab_size: usize,
    pub title_topics: usize,
    pub word_dim: usize,
    /// Width of every latent factor.
    pub latent_dim: usize,
    /// Share of the catalogue launched after the first day.
    pub new_item_share: f64,
    /// Exponent of the Zipf law of item popularity.
    pub zipf_exponent: f64,
    /// Mean organic (not exposure-driven) click behaviors per user and day.
    pub organic_behaviors_per_user_day: f64,
    /// Share of items without an image, and without a price.
    pub image_missing_share: f64,
    pub price_missing_share: f64,
    /// Rows per Arrow batch and Parquet row group.
    pub batch_rows: usize,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            users: 2_000,
            items: 5_000,
            days: 7,
            start_date: "2026-01-01".into(),
            seed: 42,
            image_dim: 4096,
            exposures_per_day: 20_000,
            slate_size: 10,
            categories: 24,
            shops: 400,
            brands: 600,
            vocab_size: 3_000,
            title_topics: 32,
            word_dim: 50,
            latent_dim: 8,
            new_item_share: 0.3,
            zipf_exponent: 1.1,
            organic_behaviors_per_user_day: 2.0,
            image_missing_share: 0.02,
            price_missing_share: 0.05,
            batch_rows: 65_536,
        }
    }
}

impl WorldConfig {
    /// Every problem with the parameters, each naming its key and the allowed range.
    pub fn validate(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        let key = |k: &str| if section.is_empty() { k.to_string() } else { format!("{section}.{k}") };
        let mut range = |k: &str, v: f64, lo: f64, hi: f64| {
            if !(v >= lo && v <= hi) {
                p.push(format!("{} = {v} is out of range: allowed {lo} to {hi}", key(k)));
            }
        };
        range("users", self.users as f64, 1.0, 1e9);
        range("items", self.items as f64, 1.0, 1e9);
        range("days", f64::from(self.days), 1.0, 3660.0);
        range("image_dim", self.image_dim as f64, 1.0, 65_536.0);
        range("exposures_per_day", self.exposures_per_day as f64, 1.0, 1e10);
        range("slate_size", f64::from(self.slate_size), 1.0, 1000.0);
        range("categories", self.categories as f64, 1.0, 1e6);
        range("shops", self.shops as f64, 1.0, 1e9);
        range("brands", self.brands as f64, 1.0, 1e9);
        range("vocab_size", self.vocab_size as f64, 2.0, 1e7);
        range("title_topics", self.title_topics as f64, 1.0, 10_000.0);
        range("word_dim", self.word_dim as f64, 1.0, 4096.0);
        range("latent_dim", self.latent_dim as f64, 1.0, 256.0);
        range("new_item_share", self.new_item_share, 0.0, 0.9);
        range("zipf_exponent", self.zipf_exponent, 0.0, 4.0);
        range("organic_behaviors_per_user_day", self.organic_behaviors_per_user_day, 0.0, 1000.0);
        range("image_missing_share", self.image_missing_share, 0.0, 1.0);
        range("price_missing_share", self.price_missing_share, 0.0, 1.0);
        range("batch_rows", self.batch_rows as f64, 1.0, 1e8);
        if self.items > 0 && (self.slate_size as usize) > self.items {
            p.push(format!(
                "{} = {} exceeds {} = {}: a slate shows distinct items",
                key("slate_size"),
                self.slate_size,
                key("items"),
                self.items
            ));
        }
        if self.start().is_none() {
            p.push(format!("{} = {:?} is not a date: use YYYY-MM-DD", key("start_date"), self.start_date));
        }
        p
    }

    /// The first day, when `start_date` parses.
    pub fn start(&self) -> Option<NaiveDate> {
        NaiveDate::parse_from_str(&self.start_date, "%Y-%m-%d").ok()
    }

    /// The dates of the world, in order.
    pub fn dates(&self) -> Vec<NaiveDate> {
        let start = self.start().unwrap_or_default();
        (0..self.days).map(|d| start + Duration::days(i64::from(d))).collect()
    }
}

/// What `generate` wrote and what the world looks like.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorldSummary {
    pub days: Vec<String>,
    pub exposures: u64,
    pub clicks: u64,
    pub behaviors: u64,
    pub items: u64,
    pub word_vectors: u64,
    pub users: u64,
    pub click_rate: f64,
    /// AUC of the true `p_click` against the drawn clicks: the ceiling for any model.
    pub bayes_auc: Option<f64>,
    /// Items first exposed on the last day.
    pub cold_start_items_last_day: u64,
    /// Share of exposures that went to the most popular 1% of items.
    pub top1pct_exposure_share: f64,
}

/// An independent RNG stream for `(seed, stream, index)`: the three make the ChaCha key, so
/// streams never overlap however long each one runs.
fn stream(seed: u64, stream: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

const STREAM_WORLD: u64 = 1;
const STREAM_DAY: u64 = 2;
const STREAM_ITEM: u64 = 3;
const STREAM_WORD: u64 = 4;

/// Generates the world into the lake. `on_day` is called after each day is published.
#[instrument(skip_all, fields(lake = lake.uri(), users = cfg.users, items = cfg.items, days = cfg.days))]
pub async fn generate(lake: &Lake, cfg: &WorldConfig, on_day: &mut dyn FnMut(u32)) -> Result<WorldSummary> {
    let problems = cfg.validate("generate");
    if !problems.is_empty() {
        return Err(PipelineError::Config(problems));
    }
    lake.ensure_writable().await?;
    let mut rng = stream(cfg.seed, STREAM_WORLD, 0);
    let world = Latent::new(cfg, &mut rng);
    let vocab = text::Vocabulary::new(
        cfg.vocab_size,
        cfg.title_topics,
        latent::content_width(cfg.latent_dim),
        cfg.word_dim,
        &mut rng,
    );
    let ids = Ids::new(cfg);
    let dates = cfg.dates();

    let items = write_items(lake, cfg, &world, &vocab, &ids, &dates).await?;
    let word_vectors = write_word_vectors(lake, cfg, &vocab).await?;
    write_categories(lake, &world, &ids).await?;

    let mut auc = BinnedAuc::default();
    let mut totals = DayCounts::default();
    let mut exposures_per_item = vec![0u64; cfg.items];
    let mut first_exposed = vec![u32::MAX; cfg.items];
    for (d, date) in dates.iter().enumerate() {
        let day = d as u32;
        let counts =
            write_day(lake, cfg, &world, &ids, day, *date, &mut auc, &mut exposures_per_item, &mut first_exposed)
                .await?;
        debug!(date = %date, exposures = counts.exposures, clicks = counts.clicks, behaviors = counts.behaviors, "day written");
        totals.add(&counts);
        on_day(day);
    }

    let last = cfg.days - 1;
    let cold = first_exposed.iter().filter(|&&d| d == last && cfg.days > 1).count() as u64;
    let mut sorted = exposures_per_item.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let top = sorted.len().div_ceil(100);
    let top_share = sorted[..top].iter().sum::<u64>() as f64 / totals.exposures.max(1) as f64;
    let summary = WorldSummary {
        days: dates.iter().map(|d| d.to_string()).collect(),
        exposures: totals.exposures,
        clicks: totals.clicks,
        behaviors: totals.behaviors,
        items,
        word_vectors,
        users: cfg.users as u64,
        click_rate: totals.clicks as f64 / totals.exposures.max(1) as f64,
        bayes_auc: auc.auc(),
        cold_start_items_last_day: cold,
        top1pct_exposure_share: top_share,
    };
    info!(exposures = summary.exposures, clicks = summary.clicks, behaviors = summary.behaviors, "world written");
    let doc = serde_json::json!({ "config": cfg, "summary": summary });
    let bytes = serde_json::to_vec_pretty(&doc)
        .map_err(|e| PipelineError::Io { path: contract::TRUTH_WORLD.into(), source: std::io::Error::other(e) })?;
    lake.put_atomic(contract::TRUTH_WORLD, bytes).await?;
    Ok(summary)
}

/// The string ids of the world's entities, made once.
struct Ids {
    users: Vec<String>,
    items: Vec<String>,
    shops: Vec<String>,
    brands: Vec<String>,
    categories: Vec<String>,
}

impl Ids {
    fn new(cfg: &WorldConfig) -> Self {
        Self {
            users: (0..cfg.users).map(|i| format!("u{i:07}")).collect(),
            items: (0..cfg.items).map(|i| format!("i{i:07}")).collect(),
            shops: (0..cfg.shops).map(|i| format!("s{i:05}")).collect(),
            brands: (0..cfg.brands).map(|i| format!("b{i:05}")).collect(),
            categories: (0..cfg.categories).map(|i| format!("c{i:03}")).collect(),
        }
    }
}

#[derive(Default)]
struct DayCounts {
    exposures: u64,
    clicks: u64,
    behaviors: u64,
}

impl DayCounts {
    fn add(&mut self, o: &DayCounts) {
        self.exposures += o.exposures;
        self.clicks += o.clicks;
        self.behaviors += o.behaviors;
    }
}

async fn write_items(
    lake: &Lake,
    cfg: &WorldConfig,
    world: &Latent,
    vocab: &text::Vocabulary,
    ids: &Ids,
    dates: &[NaiveDate],
) -> Result<u64> {
    let width = cfg.image_dim as i32;
    // Image vectors are wide: keep each batch near 16 MiB.
    let batch = (4_000_000 / cfg.image_dim.max(1)).clamp(64, cfg.batch_rows.max(64));
    let mut out = PartitionWriter::create(lake, data_file(contract::ITEMS), contract::items_schema(width), batch)?;
    let mut truth = PartitionWriter::create(
        lake,
        data_file(contract::TRUTH_ITEMS),
        contract::truth_items_schema(),
        cfg.batch_rows,
    )?;
    let mut rows = ItemRows::new(width);
    let mut truth_rows = TruthItemRows::new();
    let mut image = Vec::with_capacity(cfg.image_dim);
    let mut z = Vec::with_capacity(latent::content_width(cfg.latent_dim));
    let result: Result<()> = async {
        for (i, it) in world.items.iter().enumerate() {
            let mut rng = stream(cfg.seed, STREAM_ITEM, i as u64);
            world.title_factors(i, &mut z);
            let title = vocab.title(&z, None, &mut rng);
            let has_image = it.has_image;
            if has_image {
                world.image_embedding(i, &mut image, &mut rng);
            }
            rows.push(
                &ids.items[i],
                &ids.shops[it.shop as usize],
                &ids.brands[it.brand as usize],
                &ids.categories[it.category as usize],
                &title,
                has_image.then_some(image.as_slice()),
                it.price,
            );
            truth_rows.push(
                &ids.items[i],
                &ids.categories[it.category as usize],
                contract::epoch_day(dates[it.launch_day as usize]),
                it.quality,
                it.popularity,
                has_image,
            );
            if rows.len() >= batch {
                out.write(&rows.take()?).await?;
                truth.write(&truth_rows.take()?).await?;
            }
        }
        out.write(&rows.take()?).await?;
        truth.write(&truth_rows.take()?).await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        out.abort().await;
        truth.abort().await;
        return Err(e);
    }
    let n = out.finish().await?;
    truth.finish().await?;
    Ok(n)
}

async fn write_word_vectors(lake: &Lake, cfg: &WorldConfig, vocab: &text::Vocabulary) -> Result<u64> {
    use arrow::array::{ArrayRef, StringBuilder};
    let schema = contract::word_vectors_schema(cfg.word_dim as i32);
    let mut tokens = StringBuilder::new();
    let mut vectors = writer::vector_builder(cfg.word_dim as i32, vocab.words.len());
    for (w, word) in vocab.words.iter().enumerate() {
        let mut rng = stream(cfg.seed, STREAM_WORD, w as u64);
        tokens.append_value(word);
        vectors.values().append_slice(&vocab.vector(w, &mut rng));
        vectors.append(true);
    }
    let cols: Vec<ArrayRef> = vec![std::sync::Arc::new(tokens.finish()), std::sync::Arc::new(vectors.finish())];
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| PipelineError::arrow("building raw/word_vectors", e))?;
    write_parquet(lake, data_file(contract::WORD_VECTORS), schema, &[batch], cfg.batch_rows).await
}

async fn write_categories(lake: &Lake, world: &Latent, ids: &Ids) -> Result<()> {
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    let schema = contract::truth_categories_schema();
    let w = |k: usize| -> ArrayRef {
        std::sync::Arc::new(Float64Array::from_iter_values(world.categories.iter().map(|c| c.weights[k])))
    };
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from_iter_values(&ids.categories)),
        std::sync::Arc::new(StringArray::from_iter_values(world.categories.iter().map(|c| c.profile.name()))),
        w(0),
        w(1),
        w(2),
        w(3),
        w(4),
        std::sync::Arc::new(Float64Array::from_iter_values(world.categories.iter().map(|c| c.offset))),
    ];
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), cols)
        .map_err(|e| PipelineError::arrow("building truth/categories", e))?;
    write_parquet(lake, data_file(contract::TRUTH_CATEGORIES), schema, &[batch], 1024).await.map(|_| ())
}

/// The four writers of one day, published together only when the whole day succeeded.
struct DayWriters {
    exposures: PartitionWriter,
    clicks: PartitionWriter,
    behaviors: PartitionWriter,
    truth: PartitionWriter,
}

struct DayRows {
    exposures: ExposureRows,
    clicks: ClickRows,
    behaviors: BehaviorRows,
    truth: TruthRows,
}

impl DayRows {
    async fn flush(&mut self, w: &mut DayWriters, min_rows: usize) -> Result<()> {
        if self.exposures.len() >= min_rows.max(1) {
            w.exposures.write(&self.exposures.take()?).await?;
            w.truth.write(&self.truth.take()?).await?;
        }
        if self.clicks.len() >= min_rows.max(1) {
            w.clicks.write(&self.clicks.take()?).await?;
        }
        if self.behaviors.len() >= min_rows.max(1) {
            w.behaviors.write(&self.behaviors.take()?).await?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_day(
    lake: &Lake,
    cfg: &WorldConfig,
    world: &Latent,
    ids: &Ids,
    day: u32,
    date: NaiveDate,
    auc: &mut BinnedAuc,
    exposures_per_item: &mut [u64],
    first_exposed: &mut [u32],
) -> Result<DayCounts> {
    let dt = date.to_string();
    let part = |table: &str| data_file(&partition(table, &dt));
    let rg = cfg.batch_rows;
    let mut w = DayWriters {
        exposures: PartitionWriter::create(lake, part(contract::EXPOSURES), contract::exposures_schema(), rg)?,
        clicks: PartitionWriter::create(lake, part(contract::CLICKS), contract::clicks_schema(), rg)?,
        behaviors: PartitionWriter::create(lake, part(contract::BEHAVIORS), contract::behaviors_schema(), rg)?,
        truth: PartitionWriter::create(lake, part(contract::TRUTH_EXPOSURES), contract::truth_exposures_schema(), rg)?,
    };
    let mut rows = DayRows {
        exposures: ExposureRows::new(),
        clicks: ClickRows::new(),
        behaviors: BehaviorRows::new(),
        truth: TruthRows::new(),
    };
    let result = fill_day(cfg, world, ids, day, date, &mut w, &mut rows, auc, exposures_per_item, first_exposed).await;
    match result {
        Ok(counts) => {
            // Publish all four files; each rename is atomic and replaces only this day.
            w.exposures.finish().await?;
            w.clicks.finish().await?;
            w.behaviors.finish().await?;
            w.truth.finish().await?;
            Ok(counts)
        }
        Err(e) => {
            w.exposures.abort().await;
            w.clicks.abort().await;
            w.behaviors.abort().await;
            w.truth.abort().await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn fill_day(
    cfg: &WorldConfig,
    world: &Latent,
    ids: &Ids,
    day: u32,
    date: NaiveDate,
    w: &mut DayWriters,
    rows: &mut DayRows,
    auc: &mut BinnedAuc,
    exposures_per_item: &mut [u64],
    first_exposed: &mut [u32],
) -> Result<DayCounts> {
    let mut rng = stream(cfg.seed, STREAM_DAY, u64::from(day));
    let day_start = date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_millis();
    let day_end = day_start + DAY_MS - 1;
    let slate = cfg.slate_size as u64;
    let n_requests = cfg.exposures_per_day.div_ceil(slate);
    let mut times: Vec<u32> = (0..n_requests).map(|_| rng.random_range(0..DAY_MS as u32)).collect();
    times.sort_unstable();
    let mut counts = DayCounts::default();
    let mut chosen: Vec<usize> = Vec::with_capacity(slate as usize);
    let compact_date = date.format("%Y%m%d").to_string();
    let mut request_id = String::new();

    for (r, &offset) in times.iter().enumerate() {
        let t = day_start + i64::from(offset);
        let user = world.user_sampler.sample(&mut rng);
        let uid = &ids.users[user];
        request_id.clear();
        use std::fmt::Write;
        let _ = write!(request_id, "r{compact_date}-{r:08}");
        chosen.clear();
        while chosen.len() < slate as usize {
            let i = world.candidate(user, day, &mut rng);
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        for (pos, &item) in chosen.iter().enumerate() {
            let position = pos as u32 + 1;
            let iid = &ids.items[item];
            let p = world.p_click(user, item, position);
            let clicked = rng.random::<f64>() < p;
            rows.exposures.push(t, &request_id, uid, iid, Some(position as i32));
            rows.truth.push(&request_id, uid, iid, p);
            auc.add(p, clicked);
            counts.exposures += 1;
            exposures_per_item[item] += 1;
            first_exposed[item] = first_exposed[item].min(day);
            if clicked {
                let tc = (t + rng.random_range(2_000..60_000)).min(day_end);
                rows.clicks.push(tc, &request_id, uid, iid);
                counts.clicks += 1;
                counts.behaviors += behave(world, user, item, tc, day_end, ids, &mut rows.behaviors, &mut rng);
            }
        }
        if rows.exposures.len() >= cfg.batch_rows {
            rows.flush(w, cfg.batch_rows).await?;
        }
    }

    // Organic browsing: clicks outside the exposures, following each user's interests.
    let mean_activity = world.users.iter().map(|u| u.activity).sum::<f64>() / world.users.len().max(1) as f64;
    let gumbel = Gumbel::new(0.0, 1.0).expect("valid parameters");
    for (user, u) in world.users.iter().enumerate() {
        let rate = cfg.organic_behaviors_per_user_day * u.activity / mean_activity.max(1e-12);
        if rate <= 0.0 {
            continue;
        }
        let n = Poisson::new(rate).map(|p| p.sample(&mut rng) as u64).unwrap_or(0);
        for _ in 0..n {
            let t = day_start + i64::from(rng.random_range(0..DAY_MS as u32));
            let mut best = (f64::NEG_INFINITY, 0usize);
            for _ in 0..5 {
                let i = world.candidate(user, day, &mut rng);
                let score = world.affinity(user, i) + gumbel.sample(&mut rng);
                if score > best.0 {
                    best = (score, i);
                }
            }
            counts.behaviors += behave(world, user, best.1, t, day_end, ids, &mut rows.behaviors, &mut rng);
        }
        if rows.behaviors.len() >= cfg.batch_rows {
            rows.flush(w, cfg.batch_rows).await?;
        }
    }
    rows.flush(w, 1).await?;
    Ok(counts)
}

/// A click behavior, then maybe a cart and a purchase; returns how many events were written.
#[allow(clippy::too_many_arguments)]
fn behave<R: Rng>(
    world: &Latent,
    user: usize,
    item: usize,
    t: i64,
    day_end: i64,
    ids: &Ids,
    out: &mut BehaviorRows,
    rng: &mut R,
) -> u64 {
    let (uid, iid) = (&ids.users[user], &ids.items[item]);
    out.push(t, uid, iid, "click");
    let (p_cart, p_buy) = world.funnel(item);
    if rng.random::<f64>() >= p_cart {
        return 1;
    }
    let t_cart = (t + rng.random_range(30_000..600_000)).min(day_end);
    out.push(t_cart, uid, iid, "cart");
    if rng.random::<f64>() >= p_buy {
        return 2;
    }
    let t_buy = (t_cart + rng.random_range(60_000..3_600_000)).min(day_end);
    out.push(t_buy, uid, iid, "purchase");
    3
}
