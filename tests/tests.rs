//! End-to-end tests of the `marnflow` binary on generated worlds.

#![allow(clippy::unwrap_used)] // Tests unwrap: a failed unwrap is a failed test, with its location.

mod cluster;
mod features;
mod import;
mod ops;
mod s3;
mod stream;
mod training;
mod util;

use std::path::Path;

use marnflow_pipeline::contract;
use util::*;

#[test]
fn same_seed_gives_byte_identical_lakes_and_another_seed_does_not() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tiny_world(a.path(), 11);
    tiny_world(b.path(), 11);
    tiny_world(c.path(), 12);
    let fa = assert_same_parquet(a.path(), b.path(), "", "the same seed");
    assert_eq!(fa.len(), 4 * 4 + 4, "4 daily tables x 4 days + items, word vectors, truth items and categories");
    let exposures = "raw/exposures/dt=2026-01-01/part-00000.parquet";
    assert_ne!(std::fs::read(a.path().join(exposures)).unwrap(), std::fs::read(c.path().join(exposures)).unwrap());
    // Nothing is left in staging after a clean run.
    assert!(files(&a.path().join("_staging")).is_empty());
}

#[test]
fn every_table_has_the_contract_schema() {
    let lake = tempfile::tempdir().unwrap();
    tiny_world(lake.path(), 3);
    let check = |rel: &str, expected: arrow::datatypes::SchemaRef| {
        let found = visible_parquet(lake.path()).into_iter().filter(|p| p.starts_with(rel)).collect::<Vec<_>>();
        assert!(!found.is_empty(), "no files for {rel}");
        for f in found {
            let schema = parquet_schema(&lake.path().join(&f));
            assert_eq!(schema.fields(), expected.fields(), "{}", f.display());
        }
    };
    check(contract::EXPOSURES, contract::exposures_schema());
    check(contract::CLICKS, contract::clicks_schema());
    check(contract::BEHAVIORS, contract::behaviors_schema());
    check(contract::ITEMS, contract::items_schema(16));
    check(contract::WORD_VECTORS, contract::word_vectors_schema(50));
    check(contract::TRUTH_EXPOSURES, contract::truth_exposures_schema());
    check(contract::TRUTH_ITEMS, contract::truth_items_schema());
    check(contract::TRUTH_CATEGORIES, contract::truth_categories_schema());
}

fn sql_csv(lake: &Path, query: &str) -> Vec<Vec<String>> {
    let out = ok(&["--lake", lake.to_str().unwrap(), "sql", "--format", "csv", query]);
    out.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}

fn num(s: &str) -> f64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}

/// The default world (every default but a narrow image embedding, which does not change the
/// click model) holds the structure that later quality checks rely on.
#[test]
fn the_default_world_holds_the_planted_structure() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    let s = summary(&ok(&["--lake", l, "generate", "--image-dim", "16", "--json"]));
    let auc = s["bayes_auc"].as_f64().unwrap();
    assert!((0.65..=0.95).contains(&auc), "Bayes-optimal AUC {auc} outside 0.65..0.95");
    let ctr = s["click_rate"].as_f64().unwrap();
    assert!((0.01..=0.2).contains(&ctr), "click rate {ctr}");

    // Cold start: items first exposed on the last day, seen in the logs themselves.
    let cold = sql_csv(
        lake.path(),
        "SELECT count(*) FROM (SELECT item_id, min(dt) AS first FROM raw.exposures GROUP BY item_id) WHERE first = '2026-01-07'",
    );
    assert!(num(&cold[0][0]) >= 10.0, "only {} cold-start items on the last day", cold[0][0]);
    assert_eq!(num(&cold[0][0]) as u64, s["cold_start_items_last_day"].as_u64().unwrap());

    // Heavy tail: the top 1% of items take far more than 1% of exposures, and the top item
    // is shown orders of magnitude more often than the median exposed item.
    let top = sql_csv(
        lake.path(),
        "WITH n AS (SELECT item_id, count(*) AS c FROM raw.exposures GROUP BY item_id) \
         SELECT max(c), median(c), (SELECT sum(c) FROM (SELECT c FROM n ORDER BY c DESC LIMIT 50)) * 1.0 / sum(c) FROM n",
    );
    let (max, median, top_share) = (num(&top[0][0]), num(&top[0][1]), num(&top[0][2]));
    assert!(max > 30.0 * median, "max {max} vs median {median}: popularity is not heavy-tailed");
    assert!(top_share > 0.1, "top 1% of items take only {top_share} of exposures");

    // Per-category click dependence: in statistics-led categories the true click probability
    // follows item quality much more than in image- or title-led ones.
    let rows = sql_csv(
        lake.path(),
        "SELECT k.profile, corr(t.p_click, i.quality) FROM truth.exposures t \
         JOIN truth.items i ON i.item_id = t.item_id JOIN truth.categories k ON k.category_id = i.category_id \
         GROUP BY k.profile ORDER BY k.profile",
    );
    let corr = |p: &str| num(&rows.iter().find(|r| r[0] == p).unwrap_or_else(|| panic!("no {p} profile"))[1]);
    assert!(corr("statistics") > corr("image") + 0.15, "{rows:?}");
    assert!(corr("statistics") > corr("title") + 0.15, "{rows:?}");

    // Click rates really differ by category (not one shared rate).
    let by_cat = sql_csv(
        lake.path(),
        "SELECT i.category_id, avg(t.p_click) FROM truth.exposures t JOIN truth.items i ON i.item_id = t.item_id \
         GROUP BY i.category_id HAVING count(*) > 500",
    );
    let rates: Vec<f64> = by_cat.iter().map(|r| num(&r[1])).collect();
    let (lo, hi) = rates.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(hi > 1.5 * lo, "category click rates too uniform: {lo}..{hi}");

    // Clicks: every click is an exposure, and also a click behavior.
    let orphan = sql_csv(
        lake.path(),
        "SELECT count(*) FROM raw.clicks c LEFT JOIN raw.exposures e \
         ON e.request_id = c.request_id AND e.user_id = c.user_id AND e.item_id = c.item_id WHERE e.item_id IS NULL",
    );
    assert_eq!(orphan[0][0], "0");
    let unmatched = sql_csv(
        lake.path(),
        "SELECT count(*) FROM raw.clicks c LEFT JOIN (SELECT DISTINCT event_time, user_id, item_id FROM raw.behaviors WHERE behavior = 'click') b \
         ON b.event_time = c.event_time AND b.user_id = c.user_id AND b.item_id = c.item_id WHERE b.item_id IS NULL",
    );
    assert_eq!(unmatched[0][0], "0");
}

#[test]
fn sql_round_trips_in_every_format() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    let s = tiny_world(lake.path(), 5);
    let table = ok(&["--lake", l, "sql", "SELECT dt, count(*) AS n FROM raw.exposures GROUP BY dt ORDER BY dt"]);
    assert!(table.contains("| dt") && table.contains("2026-01-04") && table.contains("4 rows"), "{table}");

    let csv = sql_csv(lake.path(), "SELECT count(*) FROM raw.clicks");
    assert_eq!(num(&csv[0][0]) as u64, s["clicks"].as_u64().unwrap());

    let json =
        ok(&["--lake", l, "sql", "--format", "json", "SELECT item_id, price FROM raw.items ORDER BY item_id LIMIT 2"]);
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["item_id"], "i0000000");

    let out = lake.path().join("out.parquet");
    ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "parquet",
        "--output",
        out.to_str().unwrap(),
        "SELECT * FROM truth.exposures WHERE dt = '2026-01-02'",
    ]);
    let schema = parquet_schema(&out);
    assert!(schema.field_with_name("p_click").is_ok() && schema.field_with_name("dt").is_ok());

    let file = lake.path().join("q.sql");
    std::fs::write(&file, "SELECT count(*) AS n FROM raw.word_vectors").unwrap();
    let from_file = ok(&["--lake", l, "sql", "--format", "csv", "--file", file.to_str().unwrap()]);
    assert_eq!(from_file, format!("n\n{}\n", s["word_vectors"]));

    let err = fails(&["--lake", l, "sql", "SELECT no_such_column FROM raw.items"], 1);
    assert!(err.contains("no_such_column"), "{err}");
    let err = fails(&["--lake", l, "sql", "--format", "parquet", "SELECT 1"], 2);
    assert!(err.contains("--output"), "{err}");
}

#[test]
fn bad_input_gets_a_clear_message_and_a_nonzero_exit() {
    let lake = tempfile::tempdir().unwrap();
    let l = lake.path().to_str().unwrap();
    assert!(fails(&["generate", "--no-such-flag"], 2).contains("--no-such-flag"));
    assert!(fails(&["--lake", l, "generate", "--users", "0"], 2).contains("--users"));
    assert!(fails(&["--lake", l, "generate", "--image-dim", "0"], 2).contains("--image-dim"));
    let err = fails(&["--lake", l, "generate", "--start-date", "2026-02-01", "--end-date", "2026-01-15"], 2);
    assert!(err.contains("before"), "{err}");
    assert!(files(lake.path()).is_empty(), "a refused run wrote {:?}", files(lake.path()));

    // A config file with several problems: all are reported, exit 2.
    let cfg = lake.path().join("bad.toml");
    std::fs::write(&cfg, "[generate]\nusers = -3\nitems = \"x\"\nslate_size = 5000\nshopz = 1\n").unwrap();
    let err = fails(&["--lake", l, "--config", cfg.to_str().unwrap(), "generate"], 2);
    assert!(err.contains("generate.items must be integer") && err.contains("generate.shopz"), "{err}");
    let mut cmd = marnflow();
    let out = cmd
        .env("MARNFLOW_GENERATE_USERS", "0")
        .env("MARNFLOW_GENERATE_DAYS", "0")
        .args(["--lake", l, "generate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("generate.users = 0") && err.contains("generate.days = 0"), "{err}");

    // An unwritable lake: a path below a regular file.
    let blocker = lake.path().join("blocker");
    std::fs::write(&blocker, b"").unwrap();
    let bad_lake = blocker.join("lake");
    let err = fails(&["--lake", bad_lake.to_str().unwrap(), "generate", "--users", "5", "--items", "20"], 2);
    assert!(err.contains("not writable") || err.contains("cannot open lake"), "{err}");
    let err = fails(&["--lake", "ftp://example/x", "sql", "SELECT 1"], 2);
    assert!(err.contains("unsupported scheme"), "{err}");
}

/// Killing `generate` mid-run never leaves a half-written file where readers look.
#[test]
fn a_killed_generate_leaves_only_whole_files_visible() {
    let lake = tempfile::tempdir().unwrap();
    let mut child = marnflow()
        .args([
            "--lake",
            lake.path().to_str().unwrap(),
            "generate",
            "--users",
            "2000",
            "--items",
            "3000",
            "--days",
            "30",
        ])
        .args(["--image-dim", "16", "--exposures-per-day", "200000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first_day = lake.path().join("raw/exposures/dt=2026-01-01/part-00000.parquet");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !first_day.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(first_day.exists(), "the first day was never published");
    std::thread::sleep(std::time::Duration::from_millis(150));
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "generate finished before it could be killed");
    let visible = visible_parquet(lake.path());
    assert!(!visible.is_empty());
    for f in visible {
        parquet_schema(&lake.path().join(f));
    }
    // The day being written was left in staging, not published.
    assert!(!lake.path().join("raw/exposures/dt=2026-01-30").exists());
}

#[test]
fn the_demo_runs_end_to_end() {
    let lake = tempfile::tempdir().unwrap();
    let report = lake.path().join("report");
    let out = ok(&["--lake", lake.path().to_str().unwrap(), "demo", "--report", report.to_str().unwrap()]);
    for name in ["table3.md", "deciles.png", "marn/summary.md", "marn/attention.svg", "ids/loss.png"] {
        assert!(report.join(name).exists(), "the demo report lacks {name}");
    }
    for needle in [
        "| marn |",
        "| ids |",
        "| conc |",
        "| youtube_net |",
        "Bayes-optimal (truth/)",
        "Bayes-optimal AUC",
        "click rate by slate position",
        "planted category profiles",
        "statistics",
        "mean_history",
        "2026-01-07",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}");
    }
}
