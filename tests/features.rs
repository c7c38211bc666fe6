//! The feature pipeline against an oracle written from scratch in plain Rust over the raw rows
//! (no dataflow, no SQL): windows, buckets and sequences must equal it exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};

use crate::util::*;

/// Every batch of every Parquet file under `lake/rel` (a table or one partition).
fn read_table(lake: &Path, rel: &str) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for f in visible_parquet(lake).into_iter().filter(|p| p.starts_with(rel)) {
        let file = std::fs::File::open(lake.join(&f)).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
        out.extend(reader.map(Result::unwrap));
    }
    out
}

fn strings(b: &RecordBatch, col: &str) -> Vec<String> {
    b.column_by_name(col).unwrap().as_string::<i32>().iter().map(|s| s.unwrap_or("").to_string()).collect()
}

fn times(b: &RecordBatch, col: &str) -> Vec<i64> {
    b.column_by_name(col).unwrap().as_primitive::<TimestampMillisecondType>().values().to_vec()
}

struct Behavior {
    time: i64,
    item: String,
    kind: String,
}

const DAYS: [&str; 5] = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"];

fn day_of(ms: i64) -> usize {
    let base =
        chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
    ((ms - base) / 86_400_000) as usize
}

#[test]
fn features_equal_an_oracle_over_the_raw_rows_and_reruns_are_idempotent() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    ok(&[
        "--lake",
        l,
        "generate",
        "--users",
        "120",
        "--items",
        "300",
        "--days",
        "5",
        "--image-dim",
        "8",
        "--exposures-per-day",
        "1500",
        "--seed",
        "9",
    ]);
    let cfg = lake.path().join("features.toml");
    std::fs::write(&cfg, "[features]\nwindows = [1, 3]\nsequence_length = 6\nworkers = 2\n").unwrap();
    let c = cfg.to_str().unwrap();
    ok(&["--lake", l, "--config", c, "features", "--from", DAYS[0], "--to", DAYS[4]]);

    // ---- raw rows ----
    let mut price: HashMap<String, Option<f64>> = HashMap::new();
    let mut catalogue: Vec<String> = Vec::new();
    for b in read_table(lake.path(), "raw/items") {
        let p = b.column_by_name("price").unwrap().as_primitive::<Float64Type>();
        for (r, id) in strings(&b, "item_id").into_iter().enumerate() {
            price.insert(id.clone(), p.is_valid(r).then(|| p.value(r)));
            catalogue.push(id);
        }
    }
    // per day and item: exposures, clicks, carts, purchases, amount (cents)
    let mut daily: Vec<BTreeMap<String, [i64; 5]>> = vec![BTreeMap::new(); DAYS.len()];
    let mut behaviors: HashMap<String, Vec<Behavior>> = HashMap::new();
    for (d, dt) in DAYS.iter().enumerate() {
        for b in read_table(lake.path(), &format!("raw/exposures/dt={dt}")) {
            for item in strings(&b, "item_id") {
                daily[d].entry(item).or_default()[0] += 1;
            }
        }
        for b in read_table(lake.path(), &format!("raw/clicks/dt={dt}")) {
            for item in strings(&b, "item_id") {
                daily[d].entry(item).or_default()[1] += 1;
            }
        }
        let mut amount: BTreeMap<String, f64> = BTreeMap::new();
        for b in read_table(lake.path(), &format!("raw/behaviors/dt={dt}")) {
            let (t, u, i, k) =
                (times(&b, "event_time"), strings(&b, "user_id"), strings(&b, "item_id"), strings(&b, "behavior"));
            for r in 0..b.num_rows() {
                match k[r].as_str() {
                    "cart" => daily[d].entry(i[r].clone()).or_default()[2] += 1,
                    "purchase" => {
                        daily[d].entry(i[r].clone()).or_default()[3] += 1;
                        *amount.entry(i[r].clone()).or_default() += price[&i[r]].unwrap_or(0.0);
                    }
                    _ => {}
                }
                behaviors.entry(u[r].clone()).or_default().push(Behavior {
                    time: t[r],
                    item: i[r].clone(),
                    kind: k[r].clone(),
                });
            }
        }
        for (item, a) in amount {
            daily[d].entry(item).or_default()[4] = (a * 100.0).round() as i64;
        }
    }

    // ---- windows: item_stats of day D = sums over days D−W ..= D−1 ----
    let windows = [1usize, 3];
    let stat_names = ["exposures", "clicks", "carts", "purchases", "amount"];
    for (d, dt) in DAYS.iter().enumerate() {
        let mut expected: BTreeMap<String, Vec<[i64; 5]>> = BTreeMap::new();
        for (w, width) in windows.iter().enumerate() {
            for past in d.saturating_sub(*width)..d {
                for (item, c) in &daily[past] {
                    let e = expected.entry(item.clone()).or_insert_with(|| vec![[0; 5]; 2]);
                    for s in 0..5 {
                        e[w][s] += c[s];
                    }
                }
            }
        }
        let got = read_table(lake.path(), &format!("features/item_stats/dt={dt}"));
        let mut seen = 0;
        for b in &got {
            let ids = strings(b, "item_id");
            for (r, id) in ids.iter().enumerate() {
                let e = expected.get(id).unwrap_or_else(|| panic!("{dt}: unexpected item {id} in item_stats"));
                for (w, width) in windows.iter().enumerate() {
                    for (s, name) in stat_names.iter().enumerate() {
                        let col = format!("{name}_{width}d");
                        let v = if s == 4 {
                            (b.column_by_name(&col).unwrap().as_primitive::<Float64Type>().value(r) * 100.0).round()
                                as i64
                        } else {
                            b.column_by_name(&col).unwrap().as_primitive::<Int64Type>().value(r)
                        };
                        assert_eq!(v, e[w][s], "{dt} {id} {col}");
                    }
                    let ctr =
                        b.column_by_name(&format!("ctr_{width}d")).unwrap().as_primitive::<Float64Type>().value(r);
                    let want = (e[w][1] as f64 + 1.0) / (e[w][0] as f64 + 20.0);
                    assert!((ctr - want).abs() < 1e-12, "{dt} {id} ctr_{width}d {ctr} vs {want}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, expected.len(), "{dt}: item count of item_stats");
        if d == 0 {
            assert_eq!(seen, 0, "nothing is known before the first day");
        }

        // ---- buckets: equal-frequency over the catalogue, ties share a bucket ----
        let buckets = read_table(lake.path(), &format!("features/item_stat_buckets/dt={dt}"));
        let mut got_b: HashMap<(String, String), (i32, i32)> = HashMap::new();
        for b in &buckets {
            let ids = strings(b, "item_id");
            for f in b.schema().fields().iter().skip(1) {
                let name = f.name();
                let col = b.column_by_name(name).unwrap().as_primitive::<Int32Type>();
                let stat = name.rsplit_once('_').unwrap().0.to_string();
                for (r, id) in ids.iter().enumerate() {
                    let e = got_b.entry((id.clone(), stat.clone())).or_default();
                    if name.ends_with("_b10") {
                        e.0 = col.value(r);
                    } else {
                        e.1 = col.value(r);
                    }
                }
            }
        }
        let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
        for (w, width) in windows.iter().enumerate() {
            for (s, name) in stat_names.iter().enumerate() {
                let vals = catalogue
                    .iter()
                    .map(|i| {
                        expected.get(i).map_or(0.0, |e| if s == 4 { e[w][s] as f64 / 100.0 } else { e[w][s] as f64 })
                    })
                    .collect();
                columns.push((format!("{name}_{width}d"), vals));
            }
        }
        for (w, width) in windows.iter().enumerate() {
            let vals = catalogue
                .iter()
                .map(|i| {
                    let e = expected.get(i).map_or([0; 5], |e| e[w]);
                    (e[1] as f64 + 1.0) / (e[0] as f64 + 20.0)
                })
                .collect();
            columns.push((format!("ctr_{width}d"), vals));
        }
        let n = catalogue.len() as f64;
        for (stat, vals) in &columns {
            for (i, id) in catalogue.iter().enumerate() {
                let below = vals.iter().filter(|v| **v < vals[i]).count() as f64;
                let pr = below / (n - 1.0);
                let want = (((pr * 10.0).floor() as i32).min(9), ((pr * 100.0).floor() as i32).min(99));
                assert_eq!(got_b[&(id.clone(), stat.clone())], want, "{dt} {id} {stat}");
            }
        }

        // ---- sequences: the 6 most recent behaviors strictly before the exposure ----
        let mut rows = 0;
        for b in read_table(lake.path(), &format!("features/samples/dt={dt}")) {
            let (users, t) = (strings(&b, "user_id"), times(&b, "event_time"));
            let (hi, hb, hs) = (
                b.column_by_name("hist_item_ids").unwrap().as_list::<i32>(),
                b.column_by_name("hist_behaviors").unwrap().as_list::<i32>(),
                b.column_by_name("hist_seconds_before").unwrap().as_list::<i32>(),
            );
            for r in 0..b.num_rows() {
                let mut before: Vec<&Behavior> =
                    behaviors.get(&users[r]).map(|v| v.iter().filter(|x| x.time < t[r]).collect()).unwrap_or_default();
                before.sort_by(|a, b| (a.time, &a.item, &a.kind).cmp(&(b.time, &b.item, &b.kind)));
                let keep = &before[before.len().saturating_sub(6)..];
                let items: Vec<String> =
                    hi.value(r).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect();
                let kinds: Vec<String> =
                    hb.value(r).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect();
                let secs: Vec<i64> = hs.value(r).as_primitive::<Int64Type>().values().to_vec();
                assert_eq!(items, keep.iter().map(|x| x.item.clone()).collect::<Vec<_>>(), "{dt} row {r} items");
                assert_eq!(kinds, keep.iter().map(|x| x.kind.clone()).collect::<Vec<_>>(), "{dt} row {r} behaviors");
                assert_eq!(
                    secs,
                    keep.iter().map(|x| (t[r] - x.time) / 1000).collect::<Vec<_>>(),
                    "{dt} row {r} seconds"
                );
                assert!(keep.iter().all(|x| day_of(x.time) <= d));
                rows += 1;
            }
        }
        let exposures: usize =
            read_table(lake.path(), &format!("raw/exposures/dt={dt}")).iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, exposures, "{dt}: one sample per exposure");
    }

    // ---- idempotence: rerunning a day gives the same bytes and touches no other day ----
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = visible_parquet(lake.path())
        .into_iter()
        .filter(|p| p.starts_with("features") || p.starts_with("quarantine"))
        .map(|p| {
            let bytes = std::fs::read(lake.path().join(&p)).unwrap();
            (p, bytes)
        })
        .collect();
    ok(&["--lake", l, "--config", c, "features", "--date", DAYS[2]]);
    for (p, bytes) in &before {
        assert_eq!(&std::fs::read(lake.path().join(p)).unwrap(), bytes, "{} changed on rerun", p.display());
    }
    assert_eq!(
        before.len(),
        visible_parquet(lake.path())
            .into_iter()
            .filter(|p| p.starts_with("features") || p.starts_with("quarantine"))
            .count()
    );

    // Every feature table is visible to SQL with its dt column.
    let tables = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'features' ORDER BY table_name",
    ]);
    for t in ["daily_item_counts", "item_stat_buckets", "item_stats", "items", "labels", "samples", "user_history"] {
        assert!(tables.lines().any(|l| l == t), "features.{t} missing: {tables}");
        let parts = visible_parquet(lake.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().starts_with(&format!("features/{t}/dt=")))
            .count();
        assert_eq!(parts, 5, "features.{t}: one partition per day");
        let n = ok(&[
            "--lake",
            l,
            "sql",
            "--format",
            "csv",
            &format!("SELECT count(DISTINCT dt) FROM features.{t} WHERE dt >= '2026-01-02'"),
        ]);
        assert_eq!(n.lines().nth(1), Some("4"), "features.{t}: the dt column");
    }
}

#[test]
fn a_day_out_of_order_is_refused_with_a_clear_message() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    ok(&[
        "--lake",
        l,
        "generate",
        "--users",
        "30",
        "--items",
        "60",
        "--days",
        "3",
        "--image-dim",
        "4",
        "--exposures-per-day",
        "200",
    ]);
    let err = fails(&["--lake", l, "features", "--date", "2026-01-02"], 2);
    assert!(err.contains("user_history/dt=2026-01-01 is missing"), "{err}");
    let err = fails(&["--lake", l, "features", "--from", "2026-01-03", "--to", "2026-01-01"], 2);
    assert!(err.contains("before"), "{err}");
}
