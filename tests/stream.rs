//! `marnflow stream`: the days it builds equal the daily job's, a daily run takes over from it,
//! late files are counted, and `kill -9` at any point loses and duplicates nothing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use super::util::*;

const LAST_CLOSED: &str = "2026-01-05";

/// A world of `days` days: with no lateness, all but the newest have closed.
fn world(lake: &Path, days: u32) {
    generate_world(lake, 80, 200, days, 4, 1500, 33);
}

fn progress(lake: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(lake.join("_state/stream/progress.json")).unwrap()).unwrap()
}

fn stream_once(lake: &Path) -> (Vec<serde_json::Value>, String) {
    let out = run(&["--lake", lake.to_str().unwrap(), "stream", "--once", "--lateness-seconds", "0", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let days = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    (days, stderr)
}

#[test]
fn a_streamed_day_equals_the_daily_jobs_and_a_daily_run_takes_over_from_the_stream() {
    let (daily, streamed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    world(daily.path(), 6);
    world(streamed.path(), 6);
    ok(&["--lake", daily.path().to_str().unwrap(), "features", "--from", "2026-01-01", "--to", LAST_CLOSED]);
    let (days, _) = stream_once(streamed.path());
    let dates: Vec<&str> = days.iter().map(|d| d["date"].as_str().unwrap()).collect();
    assert_eq!(dates, ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", LAST_CLOSED], "day 6 has not closed");
    for d in &days {
        assert!(d["report"]["samples"].as_u64().unwrap() > 0, "{d}");
        assert!(d["raw_events"].as_u64().unwrap() > 0 && d["events_per_second"].as_f64().unwrap() > 0.0, "{d}");
        assert!(d["window_step_ms"].as_f64().unwrap() > 0.0, "{d}");
        // Built after it closed (here, once day 6's files were written), within the run.
        let delay = d["delay_seconds"].as_f64().unwrap();
        assert!((0.0..120.0).contains(&delay), "{d}");
    }
    assert_eq!(days[0]["lag_days"], 4);
    assert_eq!(days[4]["lag_days"], 0);
    let tables = assert_same_parquet(daily.path(), streamed.path(), "features", "streamed against daily");
    assert!(tables.iter().any(|t| t.starts_with("features/samples/dt=2026-01-05")), "{tables:?}");
    assert_same_parquet(daily.path(), streamed.path(), "quarantine", "quarantine, streamed against daily");
    // The window state the daily job left for its last day is the one the stream left for it.
    let state = |lake: &Path, dt: &str| std::fs::read(lake.join(format!("_state/windows/dt={dt}/part-00000.parquet")));
    assert_eq!(state(daily.path(), LAST_CLOSED).unwrap(), state(streamed.path(), LAST_CLOSED).unwrap());
    let p = progress(streamed.path());
    assert_eq!(
        (p["last_day"].as_str(), p["days_built"].as_u64(), p["late_files"].as_u64()),
        (Some(LAST_CLOSED), Some(5), Some(0))
    );

    // A daily run of day 6 takes over from the stream's state, and equals the daily job's.
    for lake in [&daily, &streamed] {
        ok(&["--lake", lake.path().to_str().unwrap(), "features", "--date", "2026-01-06"]);
    }
    assert_same_parquet(daily.path(), streamed.path(), "features", "day 6 after the stream");

    // Nothing new has closed: a second pass builds nothing. A file added to a day already built
    // is counted and named, not dropped in silence.
    let clicks = streamed.path().join("raw/clicks/dt=2026-01-03");
    let first = std::fs::read_dir(&clicks).unwrap().next().unwrap().unwrap().path();
    std::fs::copy(&first, clicks.join("late-00000.parquet")).unwrap();
    let (again, stderr) = stream_once(streamed.path());
    assert!(again.is_empty(), "{again:?}");
    assert!(stderr.contains("arrived in a day already built") && stderr.contains("late-00000.parquet"), "{stderr}");
    assert!(stderr.contains("marnflow features --from 2026-01-03 --to 2026-01-05"), "{stderr}");
    assert_eq!(progress(streamed.path())["late_files"], 1);
    // Counted once, not on every pass.
    stream_once(streamed.path());
    assert_eq!(progress(streamed.path())["late_files"], 1);
}

#[test]
fn a_stream_killed_with_sigkill_and_restarted_loses_and_repeats_nothing() {
    // 8 days, 7 closed: each process is killed after it reports a day, at most two days each.
    let (daily, killed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let last_closed = "2026-01-07";
    world(daily.path(), 8);
    world(killed.path(), 8);
    ok(&["--lake", daily.path().to_str().unwrap(), "features", "--from", "2026-01-01", "--to", last_closed]);
    let lake = killed.path().to_str().unwrap();
    // Killed three times, at different points after a day is reported (a day takes ~0.2 s here):
    // in the middle of the next day, at once, and near its end.
    let mut reported = Vec::new();
    for wait_ms in [90u64, 0, 150] {
        let mut child = marnflow()
            .args(["--lake", lake, "stream", "--lateness-seconds", "0", "--poll-seconds", "0.2", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("the stream built a day before it was killed").unwrap();
        let day: serde_json::Value = serde_json::from_str(&line).unwrap();
        reported.push(day["date"].as_str().unwrap().to_string());
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Each restart went on after the day the one before recorded.
    assert!(reported.windows(2).all(|w| w[0] < w[1]), "{reported:?}");
    let (rest, _) = stream_once(killed.path());
    assert!(!rest.is_empty(), "three kills after a day or two each cannot have left nothing to build");
    assert_same_parquet(daily.path(), killed.path(), "features", "killed three times and restarted, against daily");
    assert_same_parquet(daily.path(), killed.path(), "quarantine", "quarantine after the kills");
    let p = progress(killed.path());
    assert_eq!(p["last_day"], last_closed);
    // Each day recorded once: a day cut short was built again, not counted twice.
    assert_eq!(p["days_built"], 7);
}

/// Label window of the tests of rows within the day: shorter than the world's slowest clicks
/// (2 to 60 s after the exposure), so some clicks come after it.
const WINDOW: &str = "30";

/// Runs marnflow with the label window.
fn windowed(args: &[&str]) -> std::process::Output {
    let out = marnflow().env("MARNFLOW_FEATURES_LABEL_WINDOW_SECONDS", WINDOW).args(args).output().unwrap();
    assert!(out.status.success(), "marnflow {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A world of 4 days whose raw logs of days 2 to 4 are left out, to be replayed into it.
fn replayable(lake: &Path) {
    world(lake, 4);
    for log in ["exposures", "clicks", "behaviors"] {
        for d in 2..=4 {
            std::fs::remove_dir_all(lake.join(format!("raw/{log}/dt=2026-01-0{d}"))).unwrap();
        }
    }
}

/// `marnflow replay` of `hours` hours from `day` at `start_hour`, as fast as it can.
fn replay(lake: &Path, source: &Path, day: &str, start_hour: u32, hours: u32) {
    let (start, hours) = (start_hour.to_string(), hours.to_string());
    ok(&[
        "--lake",
        lake.to_str().unwrap(),
        "replay",
        "--source",
        source.to_str().unwrap(),
        "--from",
        day,
        "--to",
        "2026-01-04",
        "--speed",
        "0",
        "--slice-seconds",
        "3600",
        "--start-hour",
        &start,
        "--hours",
        &hours,
    ]);
}

/// The stream's JSON lines.
fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Every row of `rel` in the lake's files' order, as one batch.
fn rows(lake: &Path, rel: &str) -> arrow::array::RecordBatch {
    let batches = read_table(lake, rel);
    assert!(!batches.is_empty(), "{rel}: no rows");
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[test]
fn rows_emitted_within_the_day_are_the_daily_jobs_samples_and_a_sigkill_loses_and_repeats_none() {
    let (source, daily, streamed) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    world(source.path(), 4);
    replayable(daily.path());
    replayable(streamed.path());
    // The daily job's lake: the same replayed files, built day by day with the same window.
    replay(daily.path(), source.path(), "2026-01-02", 0, 72);
    let lake = daily.path().to_str().unwrap();
    windowed(&["--lake", lake, "features", "--from", "2026-01-01", "--to", "2026-01-03"]);

    // The stream's: day 2 arrives four hours at a time; a stream takes in what has come.
    let lake = streamed.path().to_str().unwrap();
    let once = ["--lake", lake, "stream", "--once", "--lateness-seconds", "0", "--out-of-order-seconds", "0", "--json"];
    let mut parts = Vec::new();
    let mut kills = 0;
    for (k, start) in (0..24).step_by(4).enumerate() {
        replay(streamed.path(), source.path(), "2026-01-02", start, 4);
        if k % 2 == 0 {
            let out = windowed(&once);
            parts.extend(events(&out).into_iter().filter(|e| e["event"] == "part" && e["date"] == "2026-01-02"));
        } else {
            // A long-running stream, killed with SIGKILL at once or while it works.
            let mut child = marnflow()
                .env("MARNFLOW_FEATURES_LABEL_WINDOW_SECONDS", WINDOW)
                .args(["--lake", lake, "stream", "--lateness-seconds", "0", "--out-of-order-seconds", "0"])
                .args(["--poll-seconds", "0.1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            // Killed while it opens the day, resumes it, or emits (a pass takes ~0.2 s here).
            std::thread::sleep(std::time::Duration::from_millis([60u64, 140, 220][k / 2]));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
    }
    let p = progress(streamed.path());
    assert_eq!(p["open"]["day"], "2026-01-02", "{p}");
    assert!(p["open"]["parts"].as_u64().unwrap() >= 3, "rows emitted within the day, part by part: {p}");
    assert!(parts.len() >= 2, "{parts:?}");
    for part in &parts {
        assert!(part["rows"].as_u64().unwrap() > 0, "{part}");
        assert!(part["delay_p99_seconds"].as_f64().unwrap() >= part["delay_p50_seconds"].as_f64().unwrap(), "{part}");
        // No more than the label window (and the replayed hour's slice) behind the newest event.
        assert!(part["event_lag_seconds"].as_f64().unwrap() <= 3600.0 + 30.0, "{part}");
    }
    // A part written after the last one recorded (a stop between the part and the progress
    // file): removed on restart and its rows emitted again, not twice.
    let folder = streamed.path().join("features/stream_samples/dt=2026-01-02");
    let recorded = p["open"]["parts"].as_u64().unwrap();
    std::fs::copy(folder.join("part-00000.parquet"), folder.join(format!("part-{recorded:05}.parquet"))).unwrap();
    // Days 3 and 4 arrive: days 2 and 3 close and are built; day 4 stays open.
    replay(streamed.path(), source.path(), "2026-01-03", 0, 48);
    let out = windowed(&once);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a part written after the last one recorded"), "{stderr}");
    let days: Vec<serde_json::Value> = events(&out).into_iter().filter(|e| e["event"] == "day").collect();
    assert_eq!(days.iter().map(|d| d["date"].as_str().unwrap()).collect::<Vec<_>>(), ["2026-01-02", "2026-01-03"]);
    let mut compared = 0;
    for (d, dt) in days.iter().zip(["2026-01-02", "2026-01-03"]) {
        // The rows emitted within the day are the daily job's samples, in its order.
        let emitted = rows(streamed.path(), &format!("features/stream_samples/dt={dt}"));
        let built = rows(daily.path(), &format!("features/samples/dt={dt}"));
        assert_eq!(emitted.num_rows(), built.num_rows(), "{dt}");
        assert!(emitted == built, "{dt}: the rows emitted within the day differ from features --date {dt}");
        compared += emitted.num_rows();
        assert_eq!(d["stream_rows"].as_u64().unwrap() as usize, emitted.num_rows(), "{d}");
        assert_eq!(d["late_labels"], 0, "{d}");
        // Clicks after the 30 s window: counted, their labels 0.
        assert!(d["report"]["clicked_after_window"].as_u64().unwrap() > 0, "{d}");
    }
    assert!(compared > 2000, "{compared} rows compared");
    eprintln!("rows emitted within the day compared with features --date D: {compared}, after {kills} SIGKILLs");
    for table in ["features/samples", "features/labels", "features/user_history", "quarantine"] {
        let under = |lake: &Path| {
            visible_parquet(lake)
                .into_iter()
                .filter(|f| f.starts_with(table) && !f.to_string_lossy().contains("dt=2026-01-04"))
                .collect::<Vec<_>>()
        };
        assert_eq!(under(daily.path()), under(streamed.path()), "{table}");
    }
    assert_same_parquet(daily.path(), streamed.path(), "features/samples", "samples, streamed against daily");
    assert_same_parquet(daily.path(), streamed.path(), "features/labels", "labels, streamed against daily");
    let p = progress(streamed.path());
    assert_eq!((p["last_day"].as_str(), p["open"]["day"].as_str()), (Some("2026-01-03"), Some("2026-01-04")), "{p}");
    assert_eq!(kills, 3);

    // A stream started with --from that has emitted rows of its first day but built none goes
    // on at that day when restarted, not at the lake's first day.
    let fresh = tempfile::tempdir().unwrap();
    replayable(fresh.path());
    let lake = fresh.path().to_str().unwrap();
    windowed(&["--lake", lake, "features", "--date", "2026-01-01"]);
    replay(fresh.path(), source.path(), "2026-01-02", 0, 4);
    let fresh_once =
        ["--lake", lake, "stream", "--once", "--lateness-seconds", "0", "--out-of-order-seconds", "0", "--json"];
    let first = windowed(&[&fresh_once[..], &["--from", "2026-01-02"]].concat());
    assert!(events(&first).iter().any(|e| e["event"] == "part"), "rows of day 2 emitted");
    let again = windowed(&fresh_once);
    assert!(events(&again).iter().all(|e| e["event"] != "day"), "no day built again: {:?}", events(&again));
    assert_eq!(progress(fresh.path())["open"]["day"], "2026-01-02");
}

#[test]
fn online_training_from_the_rows_emitted_trains_each_recorded_part_once_across_sigkills() {
    let (source, lake) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    world(source.path(), 4);
    replayable(lake.path());
    let path = lake.path().to_str().unwrap();
    // Days 1 and 2 built (day 3's first hour closes day 2); a model trained on them, promoted.
    replay(lake.path(), source.path(), "2026-01-02", 0, 25);
    let stream = ["--lake", path, "stream", "--lateness-seconds", "0", "--out-of-order-seconds", "0"];
    windowed(&[&stream[..], &["--once"]].concat());
    windowed(&["--lake", path, "train", "--model", "ctr", "--from", "2026-01-01", "--to", "2026-01-02"]);
    ok(&["--lake", path, "models", "promote", "ctr@v1", "--to", "production", "--reason", "online test"]);
    // Day 3 arrives a few hours at a time; the stream trains online, and is killed with SIGKILL.
    let mut trained = Vec::new();
    for (k, start) in [1u32, 7, 13, 19].into_iter().enumerate() {
        replay(lake.path(), source.path(), "2026-01-03", start, 6);
        let mut child = marnflow()
            .env("MARNFLOW_FEATURES_LABEL_WINDOW_SECONDS", WINDOW)
            .args(stream)
            .args(["--poll-seconds", "0.1", "--train", "ctr", "--register-every-steps", "2", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
                .collect::<Vec<_>>()
        });
        std::thread::sleep(std::time::Duration::from_millis([700u64, 1200, 1800, 2500][k]));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        trained.extend(reader.join().unwrap().into_iter().filter(|e| e["event"] == "trained"));
    }
    assert!(!trained.is_empty(), "the killed streams trained some parts");
    eprintln!("parts trained by the four streams killed with SIGKILL: {}", trained.len());
    // The rest arrives; one pass trains what is left and registers it.
    replay(lake.path(), source.path(), "2026-01-04", 0, 12);
    let out = windowed(&[&stream[..], &["--once", "--train", "ctr", "--json"]].concat());
    let last: Vec<serde_json::Value> = events(&out).into_iter().filter(|e| e["event"] == "trained").collect();
    assert!(last.last().is_some_and(|e| e["registered"].as_u64().is_some()), "{last:?}");
    for e in trained.iter().chain(&last) {
        assert_eq!(e["base"], "ctr@v1", "{e}");
        let auc = e["online_auc"].as_f64();
        assert!(auc.is_none_or(|a| (0.0..=1.0).contains(&a)), "{e}");
    }
    // Every part the stream recorded for days 3 and 4 trained exactly once, whatever the kills.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.path().join("_state/online/ctr/state.json")).unwrap()).unwrap();
    let parts: Vec<&str> = state["parts"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    let p = progress(lake.path());
    let recorded: Vec<String> = visible_parquet(lake.path())
        .into_iter()
        .map(|f| f.to_string_lossy().into_owned())
        .filter(|f| {
            f.starts_with("features/stream_samples/dt=2026-01-03")
                || f.starts_with("features/stream_samples/dt=2026-01-04")
        })
        .filter(|f| {
            let index: u64 = f.rsplit("part-").next().unwrap().trim_end_matches(".parquet").parse().unwrap();
            f.contains("dt=2026-01-03") || index < p["open"]["parts"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(parts, recorded, "parts trained, in order, against the parts recorded");
    eprintln!("parts trained exactly once: {} ({} rows)", parts.len(), state["samples"]);
    let rows: u64 = state["parts"].as_array().unwrap().iter().map(|p| p["rows"].as_u64().unwrap()).sum();
    let emitted: usize = recorded.iter().map(|f| rows_of_file(lake.path(), f)).sum();
    assert_eq!((state["samples"].as_u64().unwrap(), rows), (emitted as u64, emitted as u64));
    assert_eq!(
        rows_of_file(lake.path(), "features/samples/dt=2026-01-03"),
        rows_of_file(lake.path(), "features/stream_samples/dt=2026-01-03")
    );
    // The versions registered: each from its own set of parts (no run registered twice).
    let listed: serde_json::Value = serde_json::from_str(&ok(&["--lake", path, "models", "list", "--json"])).unwrap();
    let versions = listed[0]["versions"].as_array().unwrap();
    assert_eq!(versions.last(), Some(&state["registered"]), "{listed}");
    assert_eq!(
        listed[0]["aliases"]["production"], 1,
        "online versions are candidates: production stays where its owners put it"
    );

    // The last online version promoted: a new online state starts from it and trains only the
    // parts of its last day (the day open, 4) it had not seen, as they come.
    let promoted = format!("ctr@v{}", state["registered"]);
    ok(&["--lake", path, "models", "promote", &promoted, "--to", "production", "--reason", "online"]);
    replay(lake.path(), source.path(), "2026-01-04", 12, 12);
    let out = windowed(&[&stream[..], &["--once", "--train", "ctr", "--json"]].concat());
    let next: Vec<serde_json::Value> = events(&out).into_iter().filter(|e| e["event"] == "trained").collect();
    assert!(!next.is_empty(), "the rest of day 4 is trained");
    for e in &next {
        assert_eq!(e["base"], promoted.as_str(), "{e}");
        assert_eq!(e["date"], "2026-01-04", "{e}");
    }
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.path().join("_state/online/ctr/state.json")).unwrap()).unwrap();
    for p in again["parts"].as_array().unwrap() {
        assert!(!parts.contains(&p["path"].as_str().unwrap()), "{p} was trained by {promoted} already");
    }
}

/// Rows of the Parquet files under `rel`.
fn rows_of_file(lake: &Path, rel: &str) -> usize {
    read_table(lake, rel).iter().map(|b| b.num_rows()).sum()
}
