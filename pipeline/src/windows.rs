//! Rolling-window item statistics, maintained incrementally by a differential dataflow.
//!
//! Input: per item and day, the counts of that day ([`DailyCounts`]: exposures, clicks, carts,
//! purchases and purchase amount in cents). Day `d`'s counts enter the dataflow as an insertion at
//! time `d` and, for each window `W`, leave as a retraction at time `d + W`
//! (`negate().delay(t + W)`); `count_total` then keeps, per (item, window), the sums over the last
//! `W` days. The five statistics travel together as one difference ([`Sums`]), so a day adds one
//! update per item and window, not five. Advancing one day costs work proportional to that day's
//! changes, not to the window.
//!
//! **Resuming.** A run can start from the totals an earlier run reached ([`WindowSeed`],
//! [`item_window_stats_resumed`]): they enter as one difference per (item, window) at the first
//! step, together with that day's counts, and the days before the seed's only send the
//! retractions that fall due during the run ([`resumed_days`]). The result equals the run over
//! every day; the feature job persists the seed between runs.
//!
//! **Live.** [`LiveWindows`] keeps the same dataflow running between days on its own worker
//! threads (`marnflow stream`): each day is fed when it closes and costs one incremental step.
//!
//! **Partitioning.** An item's window state lives on the worker `h(item) mod workers`, where `h`
//! is DataFusion's repartition hash ([`item_partitions`]): the partition a `Partitioning::Hash`
//! on `item_id` into as many partitions as there are workers puts the item in, on one process or
//! on a Ballista cluster. Each worker feeds the items of its own partition, and the arrangement
//! is exchanged by the same hash, so a day's counts do not move between workers.
//!
//! The statistics attached to day `D` are those known at the end of day `D − 1` (no leakage from
//! the day being predicted): [`item_window_stats`] reports, for each requested day `D`, the window
//! sums at time `D − 1`.
//!
//! ```
//! use marnflow_pipeline::windows::{item_window_stats, DailyCounts};
//! let days = vec![DailyCounts { day: 10, rows: vec![("i1".into(), [4, 1, 0, 0, 0])] }];
//! let out = item_window_stats(&days, &[1, 7], &[11, 12], 1).unwrap();
//! assert_eq!(out[&11][0].sums[0], [4, 1, 0, 0, 0]); // 1-day window at the end of day 10
//! assert!(out[&12].iter().all(|r| r.sums[0] == [0; 5])); // the 1-day window has moved on
//! assert_eq!(out[&12][0].sums[1], [4, 1, 0, 0, 0]); // the 7-day window still holds it
//! ```

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};

use arrow::array::StringArray;
use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::probe::Handle;

use crate::error::{PipelineError, Result};

/// The statistics counted per item and day, in this order everywhere.
pub const STATS: [&str; 5] = ["exposures", "clicks", "carts", "purchases", "amount"];
/// Index of the purchase amount (kept in cents, so sums stay exact).
pub const AMOUNT: usize = 4;

/// Where the timely workers run: threads of this process, or processes on several machines
/// (timely's cluster mode; every process runs the same job with the same arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// `threads` workers in this process.
    Threads(usize),
    /// `threads` workers in each of `addresses.len()` processes; this one is `process`.
    Cluster { threads: usize, process: usize, addresses: Vec<String> },
}

impl Topology {
    fn config(&self) -> timely::Config {
        match self {
            Topology::Threads(n) => timely::Config::process((*n).max(1)),
            Topology::Cluster { threads, process, addresses } => timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: (*threads).max(1),
                    process: *process,
                    addresses: addresses.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            },
        }
    }

    fn threads(&self) -> usize {
        match self {
            Topology::Threads(n) | Topology::Cluster { threads: n, .. } => (*n).max(1),
        }
    }
}

/// One day of per-item counts; `day` is days since 1970-01-01.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyCounts {
    pub day: u32,
    /// `(item_id, [exposures, clicks, carts, purchases, amount_cents])`
    pub rows: Vec<(String, [i64; 5])>,
}

/// The window sums of one item on one report day: `sums[w][s]` for window `windows[w]` and
/// statistic `STATS[s]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemWindows {
    pub item_id: String,
    pub sums: Vec<[i64; 5]>,
}

/// Runs the window dataflow over `days` (any order) on `workers` timely threads and returns, for
/// each day `D` of `report_days`, every item with a non-zero sum in some window at the end of
/// `D − 1`, sorted by item id. Days before `min(report_days) − max(windows)` cannot matter and are
/// ignored.
pub fn item_window_stats(
    days: &[DailyCounts],
    windows: &[u32],
    report_days: &[u32],
    workers: usize,
) -> Result<BTreeMap<u32, Vec<ItemWindows>>> {
    item_window_stats_timed(days, windows, report_days, &Topology::Threads(workers)).map(|(r, _)| r)
}

/// The window totals an earlier run reached at the end of day `as_of`: where a later run's
/// dataflow resumes instead of rebuilding them from the daily aggregates
/// ([`item_window_stats_resumed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSeed {
    /// Days since 1970-01-01: the totals are those at the end of this day.
    pub as_of: u32,
    /// Every item with a non-zero total in some window, `sums[w]` in the order of the windows.
    pub items: Vec<ItemWindows>,
}

/// The days whose daily aggregates a run resumed from totals at the end of `as_of` needs, to
/// report up to `last_report`: the days after `as_of` it feeds (up to `last_report − 1`), and the
/// days at or before `as_of` whose counts leave a window during the run (day `t − W` leaves the
/// window of `W` days at step `t`). One day's run needs that day and one day per window.
pub fn resumed_days(windows: &[u32], as_of: u32, last_report: u32) -> std::collections::BTreeSet<u32> {
    let mut days = std::collections::BTreeSet::new();
    for t in as_of + 1..last_report {
        days.insert(t);
        for &w in windows {
            if let Some(leaving) = t.checked_sub(w) {
                days.insert(leaving);
            }
        }
    }
    days
}

/// [`item_window_stats_timed`] resumed from `seed`: the dataflow starts at the end of
/// `seed.as_of` holding the seed's totals, then is fed the days after it and, of the days at or
/// before it, only the retractions that fall due during the run, so its work follows the days
/// run, not the width of the windows. `days` must hold [`resumed_days`]; every report day must be
/// after `seed.as_of`. The result equals [`item_window_stats_timed`] over all the days.
pub fn item_window_stats_resumed(
    days: &[DailyCounts],
    windows: &[u32],
    report_days: &[u32],
    seed: &WindowSeed,
    topology: &Topology,
) -> Result<(BTreeMap<u32, Vec<ItemWindows>>, StepSeconds)> {
    if let Some(early) = report_days.iter().find(|&&d| d <= seed.as_of) {
        return Err(PipelineError::Dataflow(format!(
            "report day {early} is not after the window state's day {}: the state cannot give it",
            seed.as_of
        )));
    }
    if let Some(bad) = seed.items.iter().find(|i| i.sums.len() != windows.len()) {
        return Err(PipelineError::Dataflow(format!(
            "the window state of item {} has {} windows, not {}",
            bad.item_id,
            bad.sums.len(),
            windows.len()
        )));
    }
    run_windows(days, windows, report_days, topology, Some(seed), None)
}

/// A window dataflow that outlives one run: `marnflow stream` keeps it between days, so each day
/// costs one incremental step (that day's counts in, the counts that fall out of a window out)
/// and nothing is read again or re-seeded. The timely workers run on threads of this process
/// and wait for days between steps; the dataflow is the one [`item_window_stats`] runs.
pub struct LiveWindows {
    commands: Vec<mpsc::Sender<LiveDay>>,
    reports: mpsc::Receiver<LiveReport>,
    guards: Option<timely::communication::WorkerGuards<()>>,
    ids: HashMap<String, u32>,
    last_day: Option<u32>,
}

/// One day for the live dataflow's workers: the counts by item id, and the items first seen
/// that day (their ids follow the ones before) with their hashes. Every worker gets a copy.
#[derive(Clone)]
struct LiveDay {
    day: u32,
    rows: Arc<Vec<(u32, [i64; 5])>>,
    new_names: Arc<Vec<String>>,
    new_hashes: Arc<Vec<u64>>,
    report: bool,
}

/// What the recording worker sends back once a day is final: the totals at its end (when asked
/// for) and the seconds of the step.
type LiveReport = (u32, Option<Vec<ItemWindows>>, f64);

impl std::fmt::Debug for LiveWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveWindows")
            .field("workers", &self.commands.len())
            .field("items", &self.ids.len())
            .field("last_day", &self.last_day)
            .finish()
    }
}

impl LiveWindows {
    /// Starts `workers` timely threads holding an empty dataflow for `windows` (days).
    pub fn start(windows: &[u32], workers: usize) -> Result<Self> {
        check_windows(windows)?;
        let workers = workers.max(1);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers).map(|_| mpsc::channel::<LiveDay>()).unzip();
        let receivers: Arc<Mutex<Vec<Option<mpsc::Receiver<LiveDay>>>>> =
            Arc::new(Mutex::new(receivers.into_iter().map(Some).collect()));
        let (report_tx, reports) = mpsc::channel::<LiveReport>();
        let report_tx = Mutex::new(report_tx);
        let widths: Arc<Vec<u32>> = Arc::new(windows.to_vec());
        let n_windows = windows.len();
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let index = worker.index();
            let peers = worker.peers();
            let recorder = index == 0;
            let Some(days) = receivers.lock().ok().and_then(|mut r| r.get_mut(index).and_then(Option::take)) else {
                return;
            };
            let reply = report_tx.lock().map(|tx| tx.clone()).ok();
            let hashes: Rc<RefCell<Vec<u64>>> = Rc::new(RefCell::new(Vec::new()));
            let changes: Arc<Mutex<Vec<Change>>> = Arc::new(Mutex::new(Vec::new()));
            let probe = Handle::new();
            let sink = recorder.then(|| Arc::clone(&changes));
            let lookup = Rc::clone(&hashes);
            let hash_of = move |item: u32| lookup.borrow()[item as usize];
            let (mut input, mut seeded) = window_dataflow(worker, &widths, hash_of, sink, None, &probe);
            let mut names: Vec<String> = Vec::new();
            let mut state: Vec<Option<[i64; 5]>> = Vec::new();
            // Blocks between days; ends when the driver drops its senders.
            while let Ok(LiveDay { day, rows, new_names, new_hashes, report }) = days.recv() {
                let started = std::time::Instant::now();
                hashes.borrow_mut().extend_from_slice(&new_hashes);
                if recorder {
                    names.extend(new_names.iter().cloned());
                    state.resize(names.len() * n_windows, None);
                }
                input.advance_to(day);
                seeded.advance_to(day + 1);
                feed_share(&mut input, &rows, &hashes.borrow(), index, peers);
                input.advance_to(day + 1);
                input.flush();
                seeded.flush();
                worker.step_while(|| probe.less_than(&(day + 1)));
                if !recorder {
                    continue;
                }
                if let Ok(mut v) = changes.lock() {
                    apply_changes(&mut state, n_windows, v.drain(..));
                }
                let totals = report.then(|| {
                    let mut items = snapshot(&state, &names, n_windows);
                    items.sort_unstable_by(|a, b| a.item_id.cmp(&b.item_id));
                    items
                });
                if let Some(tx) = &reply {
                    let _ = tx.send((day, totals, started.elapsed().as_secs_f64()));
                }
            }
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
        })
        .map_err(|e| PipelineError::Dataflow(format!("cannot start the timely workers: {e}")))?;
        Ok(Self { commands: senders, reports, guards: Some(guards), ids: HashMap::new(), last_day: None })
    }

    /// The last day fed, if any.
    pub fn last_day(&self) -> Option<u32> {
        self.last_day
    }

    /// Feeds day `counts.day` (after every day fed before; days between count as empty) and
    /// waits until it is final. With `report`, returns every item with a non-zero total in some
    /// window at the end of that day, by item id: the statistics of the next day. Also returns
    /// the step's seconds.
    pub fn feed(&mut self, counts: &DailyCounts, report: bool) -> Result<(Option<Vec<ItemWindows>>, f64)> {
        if let Some(last) = self.last_day.filter(|&l| counts.day <= l) {
            return Err(PipelineError::Dataflow(format!(
                "day {} fed to the live windows after day {last}: days go forward only",
                counts.day
            )));
        }
        let mut new_names = Vec::new();
        let mut rows = Vec::with_capacity(counts.rows.len());
        for (item, c) in &counts.rows {
            let next = self.ids.len() as u32;
            let id = *self.ids.entry(item.clone()).or_insert_with(|| {
                new_names.push(item.clone());
                next
            });
            rows.push((id, *c));
        }
        let new_hashes = Arc::new(item_hashes(&new_names)?);
        let command =
            LiveDay { day: counts.day, rows: Arc::new(rows), new_names: Arc::new(new_names), new_hashes, report };
        for tx in &self.commands {
            tx.send(command.clone()).map_err(|_| PipelineError::Dataflow("a live window worker has stopped".into()))?;
        }
        self.last_day = Some(counts.day);
        match self.reports.recv() {
            Ok((day, totals, seconds)) if day == counts.day => Ok((totals, seconds)),
            Ok((day, ..)) => {
                Err(PipelineError::Dataflow(format!("the live windows reported day {day} for day {}", counts.day)))
            }
            Err(_) => Err(PipelineError::Dataflow("a live window worker has stopped (it may have panicked)".into())),
        }
    }
}

impl Drop for LiveWindows {
    fn drop(&mut self) {
        // Closing the channels ends the workers' loops.
        self.commands.clear();
        if let Some(guards) = self.guards.take() {
            drop(guards.join());
        }
    }
}

/// Seconds per dataflow step, `(time, seconds)`.
pub type StepSeconds = Vec<(u32, f64)>;
/// One day's counts by item index: `(day, [(item, [exposures, clicks, carts, purchases, amount])])`.
type DayCounts = (u32, Vec<(u32, [i64; 5])>);
/// The five statistics of one item as a differential difference: a tuple, whose sum, zero and
/// negation differential defines element-wise (`((exposures, clicks), (carts, purchases), amount)`).
type Sums = ((i64, i64), (i64, i64), i64);
/// A difference to the totals of `(item, window)`: a resumed run's seed or a due retraction.
type KeyedSums = ((u32, u8), Sums);
/// One change of a window total: `((item, window), totals, time, diff)`.
type Change = ((u32, u8), Sums, u32, isize);

fn to_sums(c: &[i64; 5]) -> Sums {
    ((c[0], c[1]), (c[2], c[3]), c[4])
}

fn from_sums(s: &Sums) -> [i64; 5] {
    let ((e, c), (k, p), a) = *s;
    [e, c, k, p, a]
}

/// [`item_window_stats`] on any [`Topology`], also returning the first worker's seconds per
/// dataflow step `(time, seconds)`: feeding one day, advancing the input and running until the
/// day is final. In cluster mode every process gets the whole result.
pub fn item_window_stats_timed(
    days: &[DailyCounts],
    windows: &[u32],
    report_days: &[u32],
    topology: &Topology,
) -> Result<(BTreeMap<u32, Vec<ItemWindows>>, StepSeconds)> {
    run_windows(days, windows, report_days, topology, None, None)
}

/// DataFusion's repartition hash of each item id ([`REPARTITION_RANDOM_STATE`]): modulo `n`, the
/// partition a `Partitioning::Hash` on the id column into `n` partitions puts the item in.
///
/// [`REPARTITION_RANDOM_STATE`]: datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE
pub fn item_hashes(items: &[String]) -> Result<Vec<u64>> {
    let array: &dyn arrow::array::Array = &StringArray::from_iter_values(items.iter());
    let mut hashes = vec![0u64; items.len()];
    datafusion::common::hash_utils::create_hashes(
        [array],
        datafusion::physical_plan::repartition::REPARTITION_RANDOM_STATE.random_state(),
        &mut hashes,
    )
    .map_err(|e| PipelineError::Dataflow(format!("hashing item ids: {e}")))?;
    Ok(hashes)
}

/// The partition of each item among `n`, as DataFusion's hash repartition on the id assigns it
/// (and as the window dataflow places its state with `n` workers).
pub fn item_partitions(items: &[String], n: usize) -> Result<Vec<usize>> {
    let n = n.max(1) as u64;
    Ok(item_hashes(items)?.into_iter().map(|h| (h % n) as usize).collect())
}

/// Where the window state of each item was kept: the worker that counted it (for tests).
type Owners = Arc<Mutex<BTreeMap<String, usize>>>;

fn run_windows(
    days: &[DailyCounts],
    windows: &[u32],
    report_days: &[u32],
    topology: &Topology,
    seed: Option<&WindowSeed>,
    owners: Option<Owners>,
) -> Result<(BTreeMap<u32, Vec<ItemWindows>>, StepSeconds)> {
    check_windows(windows)?;
    let first_report = report_days.iter().copied().min().unwrap_or(0);
    let last_report = report_days.iter().copied().max().unwrap_or(0);
    let max_window = windows.iter().copied().max().unwrap_or(1);
    // The dataflow steps through [first_time, last report − 1], the same times in every process
    // whatever data it holds; earlier days cannot reach a report, later ones are not needed.
    // Resumed: from the day after the seed's, whose step adds the seed's totals to that day's
    // changes; the days at or before the seed's only leave their windows.
    let first_time = seed.map_or(first_report.saturating_sub(max_window), |s| s.as_of + 1);
    let seed_names = seed.map(|s| s.items.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>()).unwrap_or_default();
    let oldest = if seed.is_some() { first_time.saturating_sub(max_window + 1) } else { first_time };
    let (names, all_days) = dense_ids(days, oldest, &seed_names);
    let (leaving, days): (Vec<DayCounts>, Vec<DayCounts>) = match seed {
        Some(s) => all_days.into_iter().partition(|(day, _)| *day <= s.as_of),
        None => (Vec::new(), all_days),
    };
    // Seed totals and due retractions, by step.
    let mut direct: BTreeMap<u32, Vec<KeyedSums>> = BTreeMap::new();
    if let Some(s) = seed {
        let at_seed = direct.entry(s.as_of + 1).or_default();
        for item in &s.items {
            // Every seed item is among the (sorted) names.
            let Ok(id) = names.binary_search_by(|n| n.as_str().cmp(item.item_id.as_str())) else { continue };
            for (w, total) in item.sums.iter().enumerate() {
                if total.iter().any(|&v| v != 0) {
                    at_seed.push(((id as u32, w as u8), to_sums(total)));
                }
            }
        }
        for (day, counts) in &leaving {
            for (w, &width) in windows.iter().enumerate() {
                // Still inside the window at the seed's day, leaving during the run.
                let due = day + width;
                if due > s.as_of && due < last_report {
                    let at = direct.entry(due).or_default();
                    at.extend(counts.iter().map(|(item, c)| ((*item, w as u8), to_sums(&c.map(|v| -v)))));
                }
            }
        }
    }
    let direct: Arc<BTreeMap<u32, Vec<KeyedSums>>> = Arc::new(direct);
    let hashes: Arc<Vec<u64>> = Arc::new(item_hashes(&names)?);
    let days: Arc<Vec<DayCounts>> = Arc::new(days);
    let names: Arc<Vec<String>> = Arc::new(names);
    let n_windows = windows.len();
    let windows: Arc<Vec<u32>> = Arc::new(windows.to_vec());
    let report: Arc<Vec<u32>> = Arc::new(report_days.to_vec());
    // A report on the seed's own day is the seed (no step gives it).
    let mut reported = BTreeMap::new();
    if let Some(s) = seed.filter(|s| report_days.contains(&(s.as_of + 1))) {
        let items = s.items.iter().filter(|i| i.sums.iter().any(|t| t.iter().any(|&v| v != 0)));
        reported.insert(s.as_of + 1, items.cloned().collect::<Vec<_>>());
    }
    let results: Arc<Mutex<BTreeMap<u32, Vec<ItemWindows>>>> = Arc::new(Mutex::new(reported));
    let timings: Arc<Mutex<Vec<(u32, f64)>>> = Arc::new(Mutex::new(Vec::new()));
    let step_times = Arc::clone(&timings);

    let shared = Arc::clone(&results);
    let threads = topology.threads();
    let guards = timely::execute(topology.config(), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        // The first worker of each process keeps the results (they are broadcast to all).
        let recorder = index % threads == 0;
        let windows = Arc::clone(&windows);
        let names = Arc::clone(&names);
        let owner_names = Arc::clone(&names);
        let direct = Arc::clone(&direct);
        // Changes to (item, window) → totals, as seen by the recorder.
        let changes: Arc<Mutex<Vec<Change>>> = Arc::new(Mutex::new(Vec::new()));
        let feed_hashes = Arc::clone(&hashes);
        let hashes = Arc::clone(&hashes);
        let probe = Handle::new();
        let sink = recorder.then(|| Arc::clone(&changes));
        let hash_of = move |item: u32| hashes[item as usize];
        let owners = owners.clone().map(|o| (o, Arc::clone(&owner_names), index));
        let (mut input, mut seeded) = window_dataflow(worker, &windows, hash_of, sink, owners, &probe);

        // The totals, by item and window (`item * windows + window`): kept by the recorder,
        // the one worker whose sink receives changes.
        let mut state: Vec<Option<[i64; 5]>> = if recorder { vec![None; names.len() * n_windows] } else { Vec::new() };
        let mut fed = 0usize;
        let last_time = last_report.saturating_sub(1);
        let mut t = first_time;
        input.advance_to(t);
        seeded.advance_to(t);
        while t <= last_time {
            let started = std::time::Instant::now();
            // Feed this worker's share of day t.
            while fed < days.len() && days[fed].0 <= t {
                feed_share(&mut input, &days[fed].1, &feed_hashes, index, peers);
                fed += 1;
            }
            for (key, diff) in direct.get(&t).into_iter().flatten() {
                if feed_hashes[key.0 as usize] % peers as u64 == index as u64 {
                    seeded.update(*key, *diff);
                }
            }
            input.advance_to(t + 1);
            input.flush();
            seeded.advance_to(t + 1);
            seeded.flush();
            worker.step_while(|| probe.less_than(&(t + 1)));
            if recorder {
                if let Ok(mut s) = step_times.lock() {
                    s.push((t, started.elapsed().as_secs_f64()));
                }
            }
            // Everything up to time t is final: apply it to this worker's state.
            if let Ok(mut v) = changes.lock() {
                apply_changes(&mut state, n_windows, v.drain(..));
            }
            if recorder && report.contains(&(t + 1)) {
                let items = snapshot(&state, &names, n_windows);
                if let Ok(mut r) = shared.lock() {
                    r.insert(t + 1, items);
                }
            }
            t += 1;
        }
        // Every time up to the last report's eve is final on every worker (the probe is global),
        // and nothing later is wanted: drop the dataflow rather than let timely run it to
        // completion, which would step through the retractions still due after the last report
        // (up to the widest window's worth of days). Messages still in flight to it are ignored.
        for dataflow in worker.installed_dataflows() {
            worker.drop_dataflow(dataflow);
        }
    })
    // A runtime failure, not a configuration error: the usual causes are a cluster process's own
    // address being taken or a peer going away while they connect.
    .map_err(|e| PipelineError::Dataflow(format!("cannot start the timely workers: {e}")))?;
    let joined = guards.join();
    if let Some(e) = joined.into_iter().find_map(|r| r.err()) {
        return Err(PipelineError::Dataflow(format!("a timely worker failed: {e}")));
    }
    let mut results = Arc::try_unwrap(results)
        .map_err(|_| PipelineError::Dataflow("window results still shared after the workers ended".into()))?
        .into_inner()
        .map_err(|_| PipelineError::Dataflow("a timely worker panicked".into()))?;
    for d in report_days {
        results.entry(*d).or_default();
    }
    let timings = timings.lock().map(|t| t.clone()).unwrap_or_default();
    Ok((results, timings))
}

/// Refuses an empty list of windows or a window of 0 days.
fn check_windows(windows: &[u32]) -> Result<()> {
    if windows.is_empty() || windows.contains(&0) {
        return Err(PipelineError::Config(vec![format!(
            "windows {windows:?}: give at least one window of 1 day or more"
        )]));
    }
    Ok(())
}

/// The window dataflow's inputs: day counts by item, and differences keyed by (item, window).
type CountsInput = InputSession<u32, u32, Sums>;
type KeyedInput = InputSession<u32, (u32, u8), Sums>;

/// Which worker counted each item, for tests: the shared map, the item names and this worker.
type OwnerProbe = (Owners, Arc<Vec<String>>, usize);

/// Builds the window dataflow in `worker`: day `d`'s counts (the first input, by item id) enter
/// at time `d` and leave each window `W` at `d + W`; the second input takes differences keyed by
/// (item, window) directly (a resumed run's seed and due retractions). The totals are arranged by
/// `hash_of(item)` (DataFusion's hash, so an item's state stays on the worker that feeds it), and
/// every change of a total is broadcast to every worker and pushed into `sink`, where given.
fn window_dataflow(
    worker: &mut timely::worker::Worker,
    windows: &[u32],
    hash_of: impl Fn(u32) -> u64 + 'static,
    sink: Option<Arc<Mutex<Vec<Change>>>>,
    owners: Option<OwnerProbe>,
    probe: &Handle<u32>,
) -> (CountsInput, KeyedInput) {
    worker.dataflow::<u32, _, _>(|scope| {
        let (input, counts) = scope.new_collection::<u32, Sums>();
        let (seeded, seed_updates) = scope.new_collection::<(u32, u8), Sums>();
        let mut per_window = Vec::with_capacity(windows.len());
        for (w, &width) in windows.iter().enumerate() {
            let tagged = counts.clone().map(move |item| (item, w as u8));
            per_window.push(tagged.clone().concat(tagged.negate().delay(move |t: &u32| t + width)));
        }
        let mut all = seed_updates;
        for c in per_window {
            all = all.concat(c);
        }
        use differential_dataflow::AsCollection;
        use timely::dataflow::operators::vec::Broadcast;
        let by_item = Exchange::new(move |update: &(((u32, u8), ()), u32, Sums)| hash_of(((update.0).0).0));
        let arranged =
            differential_dataflow::operators::arrange::arrangement::arrange_core::<
                _,
                _,
                KeyBatcher<(u32, u8), u32, Sums>,
                KeySpine<(u32, u8), u32, Sums>,
            >(all.map(|key| (key, ())).inner, by_item, "Arrange: windows by item hash", KeyBatcher::new);
        let mut totals = arranged.count_total();
        if let Some((owners, names, index)) = owners {
            totals = totals.inspect(move |(((item, _), _), _, _)| {
                if let Ok(mut o) = owners.lock() {
                    o.insert(names[*item as usize].clone(), index);
                }
            });
        }
        totals
            .inner
            .broadcast()
            .as_collection()
            .inspect(move |((key, total), time, diff)| {
                if let Some(sink) = &sink {
                    if let Ok(mut v) = sink.lock() {
                        v.push((*key, *total, *time, *diff));
                    }
                }
            })
            .probe_with(probe);
        (input, seeded)
    })
}

/// Items as dense u32 ids, cheap to hash and copy, for the days from `first_time` on (and the
/// items of `also`), sorted by day. The ids follow the sorted item names, so every process of a
/// cluster assigns the same ones. Returns the names (index = id) and each day's counts by id.
fn dense_ids(days: &[DailyCounts], first_time: u32, also: &[&str]) -> (Vec<String>, Vec<DayCounts>) {
    let mut by_day: Vec<&DailyCounts> = days.iter().filter(|d| d.day >= first_time).collect();
    by_day.sort_by_key(|d| d.day);
    let mut sorted: Vec<&str> =
        by_day.iter().flat_map(|d| d.rows.iter().map(|(item, _)| item.as_str())).chain(also.iter().copied()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let names: Vec<String> = sorted.into_iter().map(str::to_string).collect();
    let id_of: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
    let dense =
        by_day.iter().map(|d| (d.day, d.rows.iter().map(|(item, c)| (id_of[item.as_str()], *c)).collect())).collect();
    (names, dense)
}

/// Feeds worker `index` of `peers` its share of one day's counts: the items of its partition
/// (`hash mod peers`, [`item_partitions`]).
fn feed_share(input: &mut CountsInput, counts: &[(u32, [i64; 5])], hashes: &[u64], index: usize, peers: usize) {
    for (item, counts) in counts {
        if hashes[*item as usize] % peers as u64 != index as u64 {
            continue;
        }
        if counts.iter().any(|&c| c != 0) {
            input.update(*item, to_sums(counts));
        }
    }
}

/// Applies final changes of window totals to a worker's state: an insertion sets the total, a
/// retraction of the current total removes it.
fn apply_changes(state: &mut [Option<[i64; 5]>], n_windows: usize, changes: impl Iterator<Item = Change>) {
    for ((item, w), total, _time, diff) in changes {
        let slot = &mut state[item as usize * n_windows + w as usize];
        let total = from_sums(&total);
        if diff > 0 {
            *slot = Some(total);
        } else if *slot == Some(total) {
            *slot = None;
        }
    }
}

/// The totals as per-item rows, sorted by item id (dense ids follow the sorted names); every
/// worker of a process records the totals of all of them (they are broadcast).
fn snapshot(state: &[Option<[i64; 5]>], names: &[String], n_windows: usize) -> Vec<ItemWindows> {
    state
        .chunks(n_windows.max(1))
        .zip(names)
        .filter(|(sums, _)| sums.iter().any(Option::is_some))
        .map(|(sums, name)| ItemWindows {
            item_id: name.clone(),
            sums: sums.iter().map(|s| s.unwrap_or([0; 5])).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The windows computed from scratch: for report day D, the sum over days D−W ..= D−1.
    fn oracle(days: &[DailyCounts], windows: &[u32], report: u32) -> Vec<ItemWindows> {
        let mut items: BTreeMap<String, Vec<[i64; 5]>> = BTreeMap::new();
        for d in days {
            for (w, &width) in windows.iter().enumerate() {
                if d.day < report && d.day + width >= report {
                    for (item, c) in &d.rows {
                        let e = items.entry(item.clone()).or_insert_with(|| vec![[0; 5]; windows.len()]);
                        for s in 0..5 {
                            e[w][s] += c[s];
                        }
                    }
                }
            }
        }
        items
            .into_iter()
            .filter(|(_, s)| s.iter().any(|x| x.iter().any(|&v| v != 0)))
            .map(|(item_id, sums)| ItemWindows { item_id, sums })
            .collect()
    }

    fn random_days(seed: u64, first: u32, n: u32) -> Vec<DailyCounts> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let present: Vec<u32> = (first..first + n).filter(|_| rng.random::<f64>() > 0.15).collect();
        present // some days have no data at all
            .into_iter()
            .map(|day| DailyCounts {
                day,
                rows: (0..rng.random_range(0..12))
                    .map(|_| {
                        let item = format!("i{}", rng.random_range(0..15));
                        let e = rng.random_range(1..50);
                        (
                            item,
                            [
                                e,
                                rng.random_range(0..=e),
                                rng.random_range(0..3),
                                rng.random_range(0..2),
                                rng.random_range(0..5000),
                            ],
                        )
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn windows_equal_the_oracle_on_random_days() {
        for (seed, workers) in [(1, 1), (2, 2), (3, 3)] {
            let days = random_days(seed, 100, 40);
            let windows = [1, 7, 30];
            let report: Vec<u32> = (95..145).collect();
            let got = item_window_stats(&days, &windows, &report, workers).unwrap();
            for d in &report {
                assert_eq!(got[d], oracle(&days, &windows, *d), "seed {seed}, workers {workers}, day {d}");
            }
        }
    }

    #[test]
    fn live_windows_fed_day_by_day_equal_the_oracle_and_refuse_going_back() {
        let windows = [1, 7, 30];
        for (seed, workers) in [(7, 1), (8, 2), (9, 3)] {
            let days = random_days(seed, 100, 50);
            let mut live = LiveWindows::start(&windows, workers).unwrap();
            for d in &days {
                // Only some days report; days with no data in between count as empty.
                let report = d.day % 3 != 0;
                let (got, seconds) = live.feed(d, report).unwrap();
                assert!(seconds >= 0.0);
                assert_eq!(got.is_some(), report);
                if let Some(got) = got {
                    assert_eq!(
                        got,
                        oracle(&days, &windows, d.day + 1),
                        "seed {seed}, workers {workers}, day {}",
                        d.day
                    );
                }
            }
            // After the last day with data: an empty day still moves the windows on.
            let last = days.last().unwrap().day;
            let (got, _) = live.feed(&DailyCounts { day: last + 9, rows: Vec::new() }, true).unwrap();
            assert_eq!(got.unwrap(), oracle(&days, &windows, last + 10));
            let err = live.feed(&DailyCounts { day: last, rows: Vec::new() }, true).unwrap_err().to_string();
            assert!(err.contains("go forward only"), "{err}");
        }
        assert!(LiveWindows::start(&[], 1).is_err());
    }

    /// The partition DataFusion's own `RepartitionExec` (hash on `item_id`, `n` partitions) puts
    /// each id in.
    async fn datafusion_partitions(names: &[String], n: usize) -> BTreeMap<String, usize> {
        use arrow::datatypes::{DataType, Field, Schema};
        use datafusion::physical_plan::{repartition::RepartitionExec, ExecutionPlan, Partitioning};
        use futures::StreamExt;
        let schema = Arc::new(Schema::new(vec![Field::new("item_id", DataType::Utf8, false)]));
        let ids = Arc::new(StringArray::from_iter_values(names.iter()));
        let batch = arrow::array::RecordBatch::try_new(Arc::clone(&schema), vec![ids]).unwrap();
        let source =
            datafusion::datasource::memory::MemorySourceConfig::try_new_exec(&[vec![batch]], Arc::clone(&schema), None)
                .unwrap();
        let key = datafusion::physical_expr::expressions::col("item_id", &schema).unwrap();
        let plan = RepartitionExec::try_new(source, Partitioning::Hash(vec![key], n)).unwrap();
        let ctx = datafusion::prelude::SessionContext::new();
        let mut out = BTreeMap::new();
        for p in 0..n {
            let mut stream = plan.execute(p, ctx.task_ctx()).unwrap();
            while let Some(b) = stream.next().await {
                let b = b.unwrap();
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                for id in ids.iter().flatten() {
                    out.insert(id.to_string(), p);
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn each_items_state_lives_on_the_worker_of_its_datafusion_hash_partition() {
        let days: Vec<DailyCounts> = (0..5)
            .map(|d| DailyCounts {
                day: 100 + d,
                rows: (0..120).map(|i| (format!("item-{}", i * 7 + d), [3, 1, 0, 0, 250])).collect(),
            })
            .collect();
        let (names, _) = dense_ids(&days, 0, &[]);
        let report: Vec<u32> = (101..106).collect();
        let expected = item_window_stats(&days, &[1, 7], &report, 1).unwrap();
        for workers in [2, 3, 4] {
            let owners: Owners = Arc::new(Mutex::new(BTreeMap::new()));
            let (got, _) =
                run_windows(&days, &[1, 7], &report, &Topology::Threads(workers), None, Some(Arc::clone(&owners)))
                    .unwrap();
            assert_eq!(got, expected, "{workers} workers give other windows");
            let owners = owners.lock().unwrap().clone();
            let datafusion = datafusion_partitions(&names, workers).await;
            assert_eq!(owners.len(), names.len());
            assert_eq!(owners, datafusion, "{workers} workers: an item's state is not on its DataFusion partition");
            let ours: BTreeMap<String, usize> =
                names.iter().cloned().zip(item_partitions(&names, workers).unwrap()).collect();
            assert_eq!(ours, datafusion);
            let used: std::collections::BTreeSet<usize> = owners.values().copied().collect();
            assert_eq!(used.len(), workers, "{workers} workers: some hold no item");
        }
    }

    #[test]
    fn a_run_resumed_from_the_state_of_an_earlier_run_equals_the_run_over_every_day() {
        let windows = [1, 7, 30];
        for (seed, workers) in [(4, 1), (5, 2), (6, 3)] {
            let days = random_days(seed, 100, 60);
            // An earlier run reported up to day 141: its last totals are those at the end of 140.
            let earlier = item_window_stats(&days, &windows, &[141], 1).unwrap();
            let state = WindowSeed { as_of: 140, items: earlier[&141].clone() };
            for last in [141, 142, 143, 150, 175] {
                let report: Vec<u32> = (141..=last).collect();
                let needed = resumed_days(&windows, 140, last);
                let given: Vec<DailyCounts> = days.iter().filter(|d| needed.contains(&d.day)).cloned().collect();
                let (got, steps) =
                    item_window_stats_resumed(&given, &windows, &report, &state, &Topology::Threads(workers)).unwrap();
                for d in &report {
                    assert_eq!(got[d], oracle(&days, &windows, *d), "seed {seed}, workers {workers}, day {d}");
                }
                // Steps from the day after the seed's to the last report's eve, nothing before.
                assert_eq!(steps.first().map(|s| s.0), (last > 141).then_some(141));
                assert_eq!(steps.len() as u32, last - 141);
            }
            // A day's run reads that day and one day per window.
            assert_eq!(resumed_days(&windows, 140, 142), [111, 134, 140, 141].into_iter().collect());
        }
    }

    #[test]
    fn a_state_that_cannot_give_the_days_asked_is_refused() {
        let state = WindowSeed { as_of: 140, items: vec![ItemWindows { item_id: "a".into(), sums: vec![[1; 5]; 2] }] };
        let topology = Topology::Threads(1);
        assert!(item_window_stats_resumed(&[], &[1, 7], &[140], &state, &topology).is_err());
        assert!(item_window_stats_resumed(&[], &[1, 7, 30], &[141], &state, &topology).is_err());
        assert!(item_window_stats_resumed(&[], &[1, 7], &[141], &state, &topology).is_ok());
    }

    #[test]
    fn zero_windows_are_refused() {
        assert!(item_window_stats(&[], &[0, 7], &[1], 1).is_err());
    }
}
