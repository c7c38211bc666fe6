//! The feature pipeline against an oracle written from scratch in plain Rust over the raw rows
//! (no dataflow, no SQL): windows, buckets and sequences must equal it exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};

use crate::util::*;

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

// Over 120 lines on purpose: one end-to-end scenario whose steps build on each other; split,
// each part would have to rebuild the lake the previous parts left.
#[test]
fn features_equal_an_oracle_over_the_raw_rows_and_reruns_are_idempotent() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    generate_world(lake.path(), 120, 300, 5, 4, 1500, 9);
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
            for day in &daily[d.saturating_sub(*width)..d] {
                for (item, c) in day {
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
    generate_world(lake.path(), 30, 60, 3, 4, 200, 42);
    let err = fails(&["--lake", l, "features", "--date", "2026-01-02"], 2);
    assert!(err.contains("user_history/dt=2026-01-01 is missing"), "{err}");
    let err = fails(&["--lake", l, "features", "--from", "2026-01-03", "--to", "2026-01-01"], 2);
    assert!(err.contains("before"), "{err}");
}

/// Replaces a generated day's raw logs with hand-made CSV files holding broken rows.
fn broken_lake() -> tempfile::TempDir {
    let lake = tempfile::tempdir().unwrap();
    generate_world(lake.path(), 10, 20, 1, 4, 20, 42);
    for t in ["exposures", "clicks", "behaviors"] {
        std::fs::remove_dir_all(lake.path().join("raw").join(t)).unwrap();
        std::fs::create_dir_all(lake.path().join(format!("raw/{t}/dt=2026-01-01"))).unwrap();
    }
    let write = |t: &str, text: &str| {
        std::fs::write(lake.path().join(format!("raw/{t}/dt=2026-01-01/part-0.csv")), text).unwrap()
    };
    write(
        "exposures",
        "event_time,request_id,user_id,item_id,position\n\
         2026-01-01T10:00:00Z,r1,u0000001,i0000001,1\n\
         2026-01-01T10:00:00Z,r1,u0000001,i0000002,2\n\
         not-a-time,r2,u0000002,i0000001,1\n\
         2026-01-02T00:00:01Z,r3,u0000002,i0000003,1\n\
         2026-01-01T11:00:00Z,r4,,i0000001,1\n\
         2026-01-01T11:00:00Z,r5,u0000003,,1\n",
    );
    // Ids over the contract's 256 bytes.
    let long = "x".repeat(300);
    let append = |t: &str, row: String| {
        let path = lake.path().join(format!("raw/{t}/dt=2026-01-01/part-0.csv"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&row);
        std::fs::write(path, text).unwrap();
    };
    write(
        "clicks",
        "event_time,request_id,user_id,item_id\n\
         2026-01-01T10:00:05Z,r1,u0000001,i0000001\n\
         2026-01-01T10:00:05Z,r9,u0000009,i0000009\n\
         2026-01-01T10:00:05Z,r2,u0000002,i0000001\n",
    );
    write(
        "behaviors",
        "event_time,user_id,item_id,behavior\n\
         2026-01-01T10:00:05Z,u0000001,i0000001,click\n\
         2026-01-01T10:00:06Z,u0000001,i0000001,wishlist\n\
         2026-01-01T10:00:07Z,u0000001,,cart\n",
    );
    append("exposures", format!("2026-01-01T12:00:00Z,r6,u0000001,{long},1\n"));
    append("behaviors", format!("2026-01-01T10:00:08Z,{long},i0000001,click\n"));
    lake
}

#[test]
fn broken_rows_are_quarantined_counted_and_never_dropped() {
    let lake = broken_lake();
    let l = lake.path().to_str().unwrap();

    // Past the default share the run fails, naming the table, the share and the first rows.
    let err = fails(&["--lake", l, "features", "--date", "2026-01-01"], 2);
    assert!(err.contains("raw/exposures/dt=2026-01-01: 5 of 7 rows"), "{err}");
    assert!(err.contains("missing or unparsable event_time") && err.contains("not-a-time"), "{err}");

    let out = ok(&["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let day = &report[0];
    for (table, input, accepted, quarantined) in [("exposures", 7, 2, 5), ("clicks", 3, 1, 2), ("behaviors", 4, 1, 3)] {
        assert_eq!(day[table]["input"], input, "{table}: {day}");
        assert_eq!(day[table]["accepted"], accepted, "{table}: {day}");
        assert_eq!(day[table]["quarantined"], quarantined, "{table}: {day}");
    }
    let reasons = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT 'exposures' AS t, reason FROM quarantine.raw_exposures UNION ALL \
         SELECT 'clicks', reason FROM quarantine.raw_clicks UNION ALL \
         SELECT 'behaviors', reason FROM quarantine.raw_behaviors ORDER BY t, reason",
    ]);
    assert_eq!(
        reasons,
        "t,reason\n\
         behaviors,empty item_id\n\
         behaviors,unknown behavior\n\
         behaviors,user_id longer than 256 bytes\n\
         clicks,click with no matching exposure\n\
         clicks,click with no matching exposure\n\
         exposures,empty item_id\n\
         exposures,empty user_id\n\
         exposures,event_time outside its dt partition\n\
         exposures,item_id longer than 256 bytes\n\
         exposures,missing or unparsable event_time\n"
    );
    let samples =
        ok(&["--lake", l, "sql", "--format", "csv", "SELECT item_id, label FROM features.samples ORDER BY item_id"]);
    assert_eq!(samples, "item_id,label\ni0000001,1\ni0000002,0\n");

    // The id bound is configurable: at 300 bytes the two 300-byte ids pass.
    let out = marnflow()
        .args(["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "1", "--json"])
        .env("MARNFLOW_FEATURES_MAX_ID_BYTES", "300")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!([&report[0]["exposures"]["quarantined"], &report[0]["behaviors"]["quarantined"]], [4, 2]);
}

/// CSV rows of the wrong width or encoding and JSON lines of the wrong shape or type cost
/// themselves, not their file or day: each is quarantined with its file, line and bytes.
#[test]
fn records_that_are_no_rows_are_quarantined_with_their_file_and_line() {
    let lake = broken_lake();
    let l = lake.path().to_str().unwrap();
    let day = |t: &str| lake.path().join(format!("raw/{t}/dt=2026-01-01"));
    let mut csv = b"event_time,request_id,user_id,item_id,position\n\
        2026-01-01T10:20:00Z,r7,u0000002,i0000002,1\n\
        2026-01-01T10:20:00Z,r7,u0000002\n\
        2026-01-01T10:20:00Z,r7,u0000002,i0000003,2,9\n"
        .to_vec();
    csv.extend_from_slice(b"2026-01-01T10:20:00Z,r7,u\xff2,i0000004,3\n");
    std::fs::write(day("exposures").join("more.csv"), csv).unwrap();
    std::fs::write(
        day("behaviors").join("events.json"),
        "{\"event_time\":\"2026-01-01T10:30:00Z\",\"user_id\":\"u0000002\",\"item_id\":\"i0000002\",\"behavior\":\"cart\"}\n\
         {\"event_time\":\"2026-01-01T10:31:00Z\",\"user_id\":2,\"item_id\":\"i0000002\",\"behavior\":\"cart\"}\n\
         \n\
         {\"event_time\":\"2026-01-01T10:32:00Z\",\n\
         [\"u0000002\"]\n",
    )
    .unwrap();

    // Past the share the error names each file and line.
    let err = fails(&["--lake", l, "features", "--date", "2026-01-01"], 2);
    assert!(err.contains("raw/exposures/dt=2026-01-01: 8 of 11 rows"), "{err}");
    assert!(err.contains("raw/exposures/dt=2026-01-01/more.csv:3: 3 fields where the header has 5"), "{err}");

    let out = ok(&["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let d = &report[0];
    for (table, input, accepted, lines) in [("exposures", 11, 3, 3), ("behaviors", 8, 2, 3)] {
        let n = |k: &str| d[table][k].as_u64().unwrap();
        assert_eq!((n("input"), n("accepted"), n("lines_quarantined")), (input, accepted, lines), "{table}: {d}");
        assert_eq!(n("input"), n("accepted") + n("quarantined"), "{table}: {d}");
        assert_eq!(n("files_quarantined"), 0, "no file is lost for a bad record: {d}");
    }
    let lines = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT path, line, reason, text FROM quarantine.raw_exposures_lines UNION ALL \
         SELECT path, line, reason, text FROM quarantine.raw_behaviors_lines ORDER BY path, line",
    ]);
    assert_eq!(
        lines,
        r#"path,line,reason,text
raw/behaviors/dt=2026-01-01/events.json,2,user_id is a number where the contract wants text,"{""event_time"":""2026-01-01T10:31:00Z"",""user_id"":2,""item_id"":""i0000002"",""behavior"":""cart""}"
raw/behaviors/dt=2026-01-01/events.json,4,not JSON: EOF while parsing a value at line 1 column 37,"{""event_time"":""2026-01-01T10:32:00Z"","
raw/behaviors/dt=2026-01-01/events.json,5,an array where a JSON object was expected,"[""u0000002""]"
raw/exposures/dt=2026-01-01/more.csv,3,3 fields where the header has 5,"2026-01-01T10:20:00Z,r7,u0000002"
raw/exposures/dt=2026-01-01/more.csv,4,6 fields where the header has 5,"2026-01-01T10:20:00Z,r7,u0000002,i0000003,2,9"
raw/exposures/dt=2026-01-01/more.csv,5,user_id is not UTF-8 (invalid byte at 1 of the field),"2026-01-01T10:20:00Z,r7,u�2,i0000004,3"
"#
    );
    // The good rows of both files arrive, the JSON behavior in the user history too.
    let history = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT user_id, item_id, behavior FROM features.user_history WHERE user_id = 'u0000002'",
    ]);
    assert_eq!(history, "user_id,item_id,behavior\nu0000002,i0000002,cart\n");
}

/// Rewrites one raw Parquet partition through `edit`.
fn rewrite(path: &Path, edit: impl Fn(RecordBatch) -> RecordBatch) {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let schema = batches[0].schema();
    let merged = arrow::compute::concat_batches(&schema, &batches).unwrap();
    let edited = edit(merged);
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), edited.schema(), None).unwrap();
    w.write(&edited).unwrap();
    w.close().unwrap();
}

/// Changing anything at or after an exposure's time never changes that exposure's features.
#[test]
fn nothing_at_or_after_an_exposure_reaches_its_row() {
    use arrow::array::{ArrayRef, BooleanArray, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    generate_world(lake.path(), 60, 150, 3, 4, 2000, 4);
    ok(&["--lake", l, "features", "--from", "2026-01-01", "--to", "2026-01-03"]);
    let rows = |lake: &Path| -> BTreeMap<(String, String), (i64, String)> {
        let mut out = BTreeMap::new();
        for b in read_table(lake, "features/samples/dt=2026-01-03") {
            let (req, item, t) = (strings(&b, "request_id"), strings(&b, "item_id"), times(&b, "event_time"));
            let keep: Vec<usize> = (0..b.num_columns()).filter(|&i| b.schema().field(i).name() != "label").collect();
            let features = b.project(&keep).unwrap();
            for r in 0..b.num_rows() {
                let row = arrow::util::pretty::pretty_format_batches(&[features.slice(r, 1)]).unwrap().to_string();
                out.insert((req[r].clone(), item[r].clone()), (t[r], row));
            }
        }
        out
    };
    let before = rows(lake.path());
    let mut exposure_times: Vec<i64> = before.values().map(|(t, _)| *t).collect();
    exposure_times.sort_unstable();
    let t0 = exposure_times[exposure_times.len() / 2];

    // Behaviors at or after t0 are dropped, and new ones are added exactly at t0 and later, for
    // every user: a tie with the exposure time must not enter the sequence either.
    let day = lake.path().join("raw/behaviors/dt=2026-01-03/part-00000.parquet");
    rewrite(&day, |b| {
        let t = b.column_by_name("event_time").unwrap().as_primitive::<TimestampMillisecondType>();
        let keep = BooleanArray::from_iter(t.iter().map(|x| Some(x.unwrap() < t0)));
        let kept = arrow::compute::filter_record_batch(&b, &keep).unwrap();
        let users: Vec<String> = (0..60).map(|u| format!("u{u:07}")).collect();
        let n = users.len() * 2;
        let times: Vec<i64> = (0..n).map(|k| if k % 2 == 0 { t0 } else { t0 + 60_000 }).collect();
        let extra = RecordBatch::try_new(
            b.schema(),
            vec![
                Arc::new(TimestampMillisecondArray::from(times).with_timezone("UTC")) as ArrayRef,
                Arc::new(StringArray::from_iter_values((0..n).map(|k| users[k / 2].as_str()))),
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "i0000000"))),
                Arc::new(StringArray::from_iter_values((0..n).map(|_| "purchase"))),
            ],
        )
        .unwrap();
        arrow::compute::concat_batches(&b.schema(), &[kept, extra]).unwrap()
    });
    // Exposures after t0 are dropped too (their clicks with them).
    for t in ["exposures", "clicks"] {
        let p = lake.path().join(format!("raw/{t}/dt=2026-01-03/part-00000.parquet"));
        rewrite(&p, |b| {
            let ts = b.column_by_name("event_time").unwrap().as_primitive::<TimestampMillisecondType>();
            let keep = BooleanArray::from_iter(ts.iter().map(|x| Some(x.unwrap() <= t0)));
            arrow::compute::filter_record_batch(&b, &keep).unwrap()
        });
    }
    ok(&["--lake", l, "features", "--date", "2026-01-03", "--max-bad-share", "1"]);
    let after = rows(lake.path());
    let mut compared = 0;
    for (key, (t, row)) in &before {
        if *t <= t0 {
            let (_, again) = after.get(key).unwrap_or_else(|| panic!("{key:?} vanished"));
            assert_eq!(again, row, "the row of exposure {key:?} at {t} changed after edits at or after {t0}");
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} rows compared");
    assert!(after.len() < before.len(), "the edit removed nothing");
}

/// Timely's cluster mode: two processes on loopback produce exactly the files of one process.
#[test]
fn a_cluster_process_that_cannot_listen_is_a_runtime_failure_naming_timely() {
    let lake = tempfile::tempdir().unwrap();
    generate_world(lake.path(), 40, 100, 2, 4, 300, 5);
    // Process 0's own address is held by this test, so timely cannot bind it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hosts = [&taken, &other].map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port()));
    drop(other);
    let hostfile = lake.path().join("hosts.txt");
    std::fs::write(&hostfile, hosts.join("\n")).unwrap();
    let err = fails(
        &[
            "--lake",
            lake.path().to_str().unwrap(),
            "features",
            "--date",
            "2026-01-02",
            "--process",
            "0",
            "--processes",
            "2",
            "--hostfile",
            hostfile.to_str().unwrap(),
        ],
        1,
    );
    assert!(err.contains("cannot start the timely workers"), "{err}");
    drop(taken);
}

#[test]
fn two_processes_give_exactly_the_one_process_output() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for lake in [&one, &two] {
        generate_world(lake.path(), 80, 200, 4, 4, 1500, 21);
    }
    let range = ["features", "--from", "2026-01-01", "--to", "2026-01-04"];
    let mut single = vec!["--lake", one.path().to_str().unwrap()];
    single.extend(range);
    ok(&single);

    // Two free loopback ports (held together so they differ, released before the processes bind).
    let listeners: Vec<std::net::TcpListener> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let hosts: Vec<String> =
        listeners.iter().map(|l| format!("127.0.0.1:{}", l.local_addr().unwrap().port())).collect();
    drop(listeners);
    let hostfile = two.path().join("hosts.txt");
    std::fs::write(&hostfile, hosts.join("\n")).unwrap();
    let mut children: Vec<std::process::Child> = (0..2)
        .map(|i| {
            marnflow()
                .args(["--lake", two.path().to_str().unwrap()])
                .args(range)
                .args(["--process", &i.to_string(), "--processes", "2", "--hostfile", hostfile.to_str().unwrap()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "a cluster process failed:\n{err}");
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("a cluster process did not finish in time");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let files = assert_same_parquet(one.path(), two.path(), "features", "one process against two");
    assert!(files.len() > 20);
}

/// Raw files of any name are read with `--format`; dictionaries only ever grow.
#[test]
fn format_override_and_append_only_dictionaries() {
    let lake = broken_lake();
    let l = lake.path().to_str().unwrap();
    for t in ["exposures", "clicks", "behaviors"] {
        let dir = lake.path().join(format!("raw/{t}/dt=2026-01-01"));
        std::fs::rename(dir.join("part-0.csv"), dir.join("part-0.txt")).unwrap();
    }
    // Without --format nothing is recognised as a raw log table.
    let err = fails(&["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "1"], 2);
    assert!(err.contains("raw.exposures is missing"), "{err}");
    ok(&["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "1", "--format", "csv"]);
    let dict = |name: &str| -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for b in read_table(lake.path(), &format!("features/dictionaries/{name}.parquet")) {
            let idx = b.column(1).as_primitive::<Int64Type>();
            for (r, v) in strings(&b, "value").into_iter().enumerate() {
                out.insert(v, idx.value(r));
            }
        }
        out
    };
    let first = dict("item");
    assert!(!first.is_empty() && first.values().all(|&i| i >= 2), "0 and 1 are reserved: {first:?}");

    // A second day with new items: old indices keep their meaning, new ones come after.
    let dir = lake.path().join("raw/exposures/dt=2026-01-02");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("part-0.txt"),
        "event_time,request_id,user_id,item_id,position\n2026-01-02T09:00:00Z,r7,u0000001,i0000007,1\n",
    )
    .unwrap();
    for t in ["clicks", "behaviors"] {
        let dir = lake.path().join(format!("raw/{t}/dt=2026-01-02"));
        std::fs::create_dir_all(&dir).unwrap();
        let header = if t == "clicks" {
            "event_time,request_id,user_id,item_id\n"
        } else {
            "event_time,user_id,item_id,behavior\n"
        };
        std::fs::write(dir.join("part-0.txt"), header).unwrap();
    }
    ok(&["--lake", l, "features", "--date", "2026-01-02", "--format", "csv"]);
    let second = dict("item");
    for (v, i) in &first {
        assert_eq!(second.get(v), Some(i), "index of {v} changed");
    }
    let max_first = first.values().max().copied().unwrap();
    assert!(second.iter().filter(|(v, _)| !first.contains_key(*v)).all(|(_, i)| *i > max_first));
    assert!(second.len() >= first.len());
}

/// Regression (issue 3): a day whose raw logs hold no rows builds empty tables with every column,
/// instead of failing on a table registered without columns.
#[test]
fn regression_3_a_day_without_events_builds_empty_tables() {
    let lake = broken_lake();
    let l = lake.path().to_str().unwrap();
    let headers = [
        ("exposures", "event_time,request_id,user_id,item_id,position\n"),
        ("clicks", "event_time,request_id,user_id,item_id\n"),
        ("behaviors", "event_time,user_id,item_id,behavior\n"),
    ];
    for (t, header) in headers {
        std::fs::write(lake.path().join(format!("raw/{t}/dt=2026-01-01/part-0.csv")), header).unwrap();
    }
    let out = ok(&["--lake", l, "features", "--date", "2026-01-01", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report[0]["samples"], 0);
    assert_eq!(report[0]["exposures"]["input"], 0);
    let columns = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'features' AND table_name = 'samples'",
    ]);
    for c in ["request_id", "label", "hist_item_ids", "clicks_7d_b10"] {
        assert!(columns.lines().any(|x| x == c), "{c} missing: {columns}");
    }
}

/// Issue 16, file faults: with day 1 built, day 2's partitions get a CSV beside the Parquet, a
/// file of no known format, a truncated Parquet file and a CSV without required columns. Every
/// file is read by its extension or quarantined whole with its path, size and reason; the day
/// goes on while the share allows, and input = accepted + quarantined holds for every table.
#[test]
fn every_raw_file_is_read_or_quarantined_whole_and_named() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    generate_world(lake.path(), 30, 60, 2, 4, 400, 7);
    ok(&["--lake", l, "features", "--date", "2026-01-01"]);
    let count =
        |q: &str| -> u64 { ok(&["--lake", l, "sql", "--format", "csv", q]).lines().nth(1).unwrap().parse().unwrap() };
    let behaviors = count("SELECT count(*) FROM raw.behaviors WHERE dt = '2026-01-02'");
    let day = |t: &str| lake.path().join(format!("raw/{t}/dt=2026-01-02"));
    std::fs::write(
        day("behaviors").join("late.csv"),
        "event_time,user_id,item_id,behavior\n2026-01-02T23:00:00Z,u9,i9,click\n2026-01-02T23:00:01Z,u9,i9,cart\n",
    )
    .unwrap();
    std::fs::write(day("behaviors").join("notes.txt"), "hello").unwrap();
    std::fs::write(day("exposures").join("broken.parquet"), b"PAR1 not a footer").unwrap();

    let out = ok(&["--lake", l, "features", "--date", "2026-01-02", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let d = &report[0];
    for t in ["exposures", "clicks", "behaviors"] {
        let n = |k: &str| d[t][k].as_u64().unwrap();
        assert_eq!(n("input"), n("accepted") + n("quarantined"), "{t}: {d}");
    }
    assert_eq!(d["behaviors"]["input"].as_u64(), Some(behaviors + 2), "the CSV beside the Parquet is read: {d}");
    assert_eq!(
        count("SELECT count(*) FROM features.user_history WHERE dt = '2026-01-02' AND user_id = 'u9'"),
        2,
        "the user history reads the same files"
    );
    assert_eq!(d["behaviors"]["files_quarantined"], 1, "{d}");
    assert_eq!(d["exposures"]["files_quarantined"], 1, "{d}");
    let listed = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT path, bytes, reason FROM quarantine.raw_exposures_files UNION ALL \
         SELECT path, bytes, reason FROM quarantine.raw_behaviors_files ORDER BY path",
    ]);
    assert!(listed.contains("raw/behaviors/dt=2026-01-02/notes.txt,5,\"no known format"), "{listed}");
    assert!(listed.contains("raw/exposures/dt=2026-01-02/broken.parquet,17,unreadable as parquet"), "{listed}");
    let copy = lake.path().join("quarantine/_files/raw_exposures/dt=2026-01-02/broken.parquet");
    assert_eq!(std::fs::read(copy).unwrap(), b"PAR1 not a footer");

    // A readable file without required columns: its rows are counted, and past the share the
    // error names the file and what it lacks.
    std::fs::remove_file(day("exposures").join("broken.parquet")).unwrap();
    std::fs::remove_file(day("behaviors").join("notes.txt")).unwrap();
    std::fs::write(day("clicks").join("short.csv"), "event_time,user_id\n2026-01-02T10:00:00Z,u1\n").unwrap();
    let err = fails(&["--lake", l, "features", "--date", "2026-01-02", "--max-bad-share", "0"], 2);
    assert!(
        err.contains("raw/clicks/dt=2026-01-02/short.csv (43 bytes, 1 rows): missing columns request_id, item_id"),
        "{err}"
    );
    let out = ok(&["--lake", l, "features", "--date", "2026-01-02", "--max-bad-share", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let clicks = &report[0]["clicks"];
    assert_eq!(clicks["files_quarantined"], 1, "{clicks}");
    assert_eq!(
        clicks["input"].as_u64().unwrap(),
        clicks["accepted"].as_u64().unwrap() + clicks["quarantined"].as_u64().unwrap()
    );
}

/// The catalogue is read file by file and checked item by item: images as plain float64 lists
/// (as pandas writes them) are read exactly; an image of another width or with a NaN is
/// quarantined and its item kept without it; an empty or repeated id is quarantined; a
/// 10,000-word title is cut to the model's length and counted; an unreadable file is
/// quarantined whole and named.
#[test]
fn the_catalogue_is_checked_item_by_item_and_file_by_file() {
    use arrow::array::{Float64Builder, ListBuilder, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    generate_world(lake.path(), 30, 60, 1, 4, 200, 7);
    let long_title = (0..10_000).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
    let rows: [(&str, Option<Vec<f64>>, &str); 6] = [
        ("p1", Some(vec![1.0, 2.0, 3.0, 0.25]), "a lamp"),
        ("p2", Some(vec![1.0, 2.0, 3.0]), "a desk"),
        ("p3", Some(vec![1.0, f64::NAN, 3.0, 4.0]), "a chair"),
        ("p4", None, &long_title),
        ("", Some(vec![1.0, 2.0, 3.0, 4.0]), "no id"),
        ("p1", None, "p1 again"),
    ];
    let mut builder = ListBuilder::new(Float64Builder::new());
    for (_, image, _) in &rows {
        builder.append_option(image.as_ref().map(|v| v.iter().map(|x| Some(*x))));
    }
    let images: Arc<dyn Array> = Arc::new(builder.finish());
    let text = |k: usize| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| match k {
            0 => r.0,
            1 => r.2,
            _ => "c000",
        })))
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("category_id", DataType::Utf8, false),
        Field::new("title", DataType::Utf8, false),
        Field::new("image_embedding", images.data_type().clone(), true),
    ]));
    let batch = RecordBatch::try_new(schema.clone(), vec![text(0), text(2), text(1), images]).unwrap();
    let file = std::fs::File::create(lake.path().join("raw/items/pandas.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    std::fs::write(lake.path().join("raw/items/broken.parquet"), b"PAR1 nope").unwrap();

    // Past the share, the error names the file and the first items.
    let err = fails(&["--lake", l, "features", "--date", "2026-01-01"], 2);
    assert!(err.contains("raw/items: 2 of 66 item rows"), "{err}");
    assert!(err.contains("raw/items/broken.parquet (9 bytes): unreadable as parquet"), "{err}");
    assert!(err.contains("raw/items/pandas.parquet row 4: empty item_id"), "{err}");

    let out = ok(&["--lake", l, "features", "--date", "2026-01-01", "--max-bad-share", "0.5", "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let items = &report[0]["items"];
    let n = |k: &str| items[k].as_u64().unwrap();
    assert_eq!(
        [n("input"), n("accepted"), n("quarantined"), n("images_quarantined"), n("titles_cut")],
        [66, 64, 2, 2, 1],
        "{items}"
    );
    assert_eq!([n("files"), n("files_quarantined"), n("image_width")], [3, 1, 4], "{items}");
    let sql = |q: &str| ok(&["--lake", l, "sql", "--format", "csv", q]);
    assert_eq!(
        sql("SELECT path, row, item_id, kept, reason FROM quarantine.raw_items ORDER BY path, row"),
        "path,row,item_id,kept,reason\n\
         raw/items/pandas.parquet,1,p2,true,image has 3 values; the catalogue's images have 4\n\
         raw/items/pandas.parquet,2,p3,true,\"image has a missing, NaN or infinite value (in float32)\"\n\
         raw/items/pandas.parquet,4,,false,empty item_id\n\
         raw/items/pandas.parquet,5,p1,false,duplicate item_id: first in raw/items/pandas.parquet\n"
    );
    assert_eq!(
        sql("SELECT i.item_id, c.image_embedding IS NULL AS no_image, array_length(c.title_tokens) AS words, \
             c.image_embedding[4] AS last FROM features.items i \
             JOIN features.item_content c ON c.item_id = i.item_id AND c.dt = i.content_dt \
             WHERE i.item_id LIKE 'p%' ORDER BY i.item_id"),
        "item_id,no_image,words,last\np1,false,2,0.25\np2,true,2,\np3,true,2,\np4,true,32,\n"
    );
    assert_eq!(sql("SELECT count(*) FROM features.items"), "count(*)\n64\n");
}

/// Item content is stored once per change: the first day holds the whole catalogue, a day without
/// changes an empty partition, a changed title only that item; every day's item table points each
/// item at its content, SQL can join the two, and the new words reach the token dictionary.
#[test]
fn item_content_is_stored_once_per_change_and_each_day_points_to_it() {
    use arrow::array::{ArrayRef, StringArray};
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    generate_world(lake.path(), 40, 50, 3, 4, 300, 5);
    ok(&["--lake", l, "features", "--from", DAYS[0], "--to", DAYS[1]]);
    let sql = |q: &str| ok(&["--lake", l, "sql", "--format", "csv", q]);
    assert_eq!(
        sql("SELECT dt, count(*) AS n FROM features.item_content GROUP BY dt ORDER BY dt"),
        "dt,n\n2026-01-01,50\n",
        "the first day stores every item's content, the second (no change) none"
    );
    assert!(read_table(lake.path(), "features/item_content/dt=2026-01-02").iter().all(|b| b.num_rows() == 0));
    assert_eq!(sql("SELECT count(*) AS n FROM features.items WHERE content_dt <> '2026-01-01'"), "n\n0\n");

    // One item's title changes in the catalogue; day 3 stores that item alone and points it there.
    let items = visible_parquet(lake.path()).into_iter().find(|p| p.starts_with("raw/items")).unwrap();
    let changed = std::sync::Mutex::new(String::new());
    rewrite(&lake.path().join(items), |b| {
        let ids = b.column_by_name("item_id").unwrap().as_string::<i32>().clone();
        *changed.lock().unwrap() = ids.value(7).to_string();
        let titles = b.column_by_name("title").unwrap().as_string::<i32>();
        let edited: StringArray =
            (0..b.num_rows()).map(|r| Some(if r == 7 { "Brand New Words" } else { titles.value(r) })).collect();
        let (i, _) = b.schema().column_with_name("title").unwrap();
        let mut cols: Vec<ArrayRef> = b.columns().to_vec();
        cols[i] = std::sync::Arc::new(edited);
        RecordBatch::try_new(b.schema(), cols).unwrap()
    });
    let changed = changed.into_inner().unwrap();
    let out = ok(&["--lake", l, "features", "--date", DAYS[2], "--json"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report[0]["items_changed"], 1, "{report}");
    assert_eq!(
        sql("SELECT item_id, array_to_string(title_tokens, ' ') AS words FROM features.item_content WHERE dt = '2026-01-03'"),
        format!("item_id,words\n{changed},brand new words\n")
    );
    assert_eq!(
        sql("SELECT content_dt, count(*) AS n FROM features.items WHERE dt = '2026-01-03' GROUP BY content_dt ORDER BY content_dt"),
        "content_dt,n\n2026-01-01,49\n2026-01-03,1\n"
    );
    // The item side as a user would join it: every item of the day finds exactly one content row.
    assert_eq!(
        sql("SELECT count(*) AS n, count(c.item_id) AS joined FROM features.items i \
             LEFT JOIN features.item_content c ON c.item_id = i.item_id AND c.dt = i.content_dt \
             WHERE i.dt = '2026-01-03'"),
        "n,joined\n50,50\n"
    );
    // The new words reached the token dictionary.
    let tokens = read_table(lake.path(), "features/dictionaries/token.parquet");
    assert!(tokens.iter().any(|b| strings(b, "value").iter().any(|v| v == "brand")), "no token 'brand'");
}

/// A daily run resumes its windows from the state the run before left and writes exactly the
/// tables of a run that rebuilds them; a missing, corrupt or foreign state falls back to the
/// rebuild with a warning, and a rerun of an earlier day removes the states that counted it.
#[test]
fn a_daily_run_resumes_its_windows_from_the_state_the_run_before_left() {
    let (resumed, rebuilt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for lake in [&resumed, &rebuilt] {
        generate_world(lake.path(), 80, 200, 7, 4, 1500, 33);
        ok(&["--lake", lake.path().to_str().unwrap(), "features", "--from", "2026-01-01", "--to", "2026-01-05"]);
    }
    let state = |lake: &Path, dt: &str| lake.join(format!("_state/windows/dt={dt}/part-00000.parquet"));
    assert!(state(resumed.path(), "2026-01-05").exists(), "the backfill left no window state for its last day");
    let daily = |lake: &Path, dt: &str| -> (serde_json::Value, String) {
        let out = run(&["--lake", lake.to_str().unwrap(), "features", "--date", dt, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (reports[0].clone(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let same_tables = |what: &str| assert_same_parquet(resumed.path(), rebuilt.path(), "features", what);

    // Day 6: resumed from day 5's state, against the rebuild of a lake whose state is gone.
    std::fs::remove_dir_all(rebuilt.path().join("_state")).unwrap();
    let (with_state, quiet) = daily(resumed.path(), "2026-01-06");
    let (without, warned) = daily(rebuilt.path(), "2026-01-06");
    assert_eq!(with_state["windows_resumed_from"], "2026-01-05");
    assert!(!quiet.contains("rebuilding the windows"), "{quiet}");
    assert!(without["windows_resumed_from"].is_null());
    assert!(warned.contains("no window state") && warned.contains("rebuilding the windows"), "{warned}");
    same_tables("day 6");
    let day6 = |lake: &Path| std::fs::read(state(lake, "2026-01-06")).unwrap();
    assert_eq!(day6(resumed.path()), day6(rebuilt.path()), "the states left by the two runs differ");

    // Day 7 on a state that is not Parquet, and on one written for other windows: the rebuild.
    std::fs::write(state(resumed.path(), "2026-01-06"), b"not parquet").unwrap();
    let (corrupt, warned) = daily(resumed.path(), "2026-01-07");
    assert!(corrupt["windows_resumed_from"].is_null());
    assert!(warned.contains("cannot be used") && warned.contains("dt=2026-01-06"), "{warned}");
    let (_, _) = daily(rebuilt.path(), "2026-01-07");
    same_tables("day 7, corrupt state");
    std::fs::copy(state(rebuilt.path(), "2026-01-06"), state(resumed.path(), "2026-01-06")).unwrap();
    let config = resumed.path().join("other-windows.toml");
    std::fs::write(&config, "[features]\nwindows = [1, 7]\n").unwrap();
    let out = run(&[
        "--config",
        config.to_str().unwrap(),
        "--lake",
        resumed.path().to_str().unwrap(),
        "features",
        "--date",
        "2026-01-07",
        "--json",
    ]);
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{warned}");
    assert!(warned.contains("cannot be used") && warned.contains("windows [1, 7]"), "{warned}");

    // A rerun of day 3 removes the states after it (they counted day 3's old aggregates), so
    // the next day's run rebuilds; the tables stay those of the rebuild.
    for lake in [&resumed, &rebuilt] {
        ok(&["--lake", lake.path().to_str().unwrap(), "features", "--from", "2026-01-01", "--to", "2026-01-07"]);
        ok(&["--lake", lake.path().to_str().unwrap(), "features", "--date", "2026-01-03"]);
    }
    assert!(state(resumed.path(), "2026-01-03").exists());
    assert!(!state(resumed.path(), "2026-01-07").exists(), "a state that counted the rerun day is left");
    let (after, _) = daily(resumed.path(), "2026-01-04");
    assert_eq!(after["windows_resumed_from"], "2026-01-03");
    let (_, _) = daily(rebuilt.path(), "2026-01-04");
    same_tables("after a rerun of day 3");
}

/// Days rebuilt with one file a day after a run that wrote two (`--partitions 2`, then `1`): every
/// feature table's partitions hold the files of the last run only, byte for byte those of a lake
/// built with one file a day from the start (a stale `part-00001` beside the new file would double
/// the day's labels, samples and user state for every reader, and the next day's histories).
#[test]
fn a_rerun_with_fewer_files_a_day_leaves_no_stale_file() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for lake in [&one, &two] {
        generate_world(lake.path(), 80, 200, 3, 4, 800, 21);
    }
    let range = ["features", "--from", DAYS[0], "--to", DAYS[2]];
    let run = |lake: &Path, more: &[&str]| {
        let mut args = vec!["--lake", lake.to_str().unwrap()];
        args.extend(range);
        args.extend(more);
        ok(&args)
    };
    run(one.path(), &[]);
    run(two.path(), &["--partitions", "2"]);
    let split = files(&two.path().join("features/samples/dt=2026-01-02"));
    assert_eq!(split.len(), 2, "--partitions 2 wrote {split:?}");
    run(two.path(), &["--partitions", "1"]);
    let same = assert_same_parquet(one.path(), two.path(), "features", "one file a day, then two, then one");
    assert!(same.iter().any(|p| p.starts_with("features/labels/dt=2026-01-03")), "{same:?}");
}
