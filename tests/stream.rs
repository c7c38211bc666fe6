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
