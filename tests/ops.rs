//! The scheduler files under `ops/` (systemd, cron, Airflow, Kubernetes), the daily wrapper
//! `ops/marnflow-daily.sh` and the commands of `ops/RUNBOOK.md`.
//!
//! Each file is checked by its real checker when installed (`systemd-analyze verify`; Airflow's
//! DagBag and `kubernetes-validate` from the venv of `bash ops/ci-tools.sh`) and by parsing here in
//! any case; a missing checker is skipped with a message naming what to install. Every checker is
//! also shown a broken copy, which it must reject. The wrapper, the cron line, the units' and the
//! CronJob's arguments and the DAG's command really run, on a tiny lake or as a dry run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::*;

/// The only marnflow variables a deployment file may set: the lake, the config file and the log
/// format (every other setting lives in the config file).
const DEPLOY_ENV: [&str; 3] = ["MARNFLOW_LAKE", "MARNFLOW_CONFIG", "MARNFLOW_LOG_FORMAT"];

/// Where the files of the examples are installed (ops/systemd, ops/cron, ops/k8s).
const INSTALL: &str = "/opt/marnflow/";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn skip(checker: &str, install: &str) {
    eprintln!("SKIP {checker}: not installed; install {install} (or run `bash ops/ci-tools.sh`); the other checks ran");
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// The venv of `ops/ci-tools.sh` (Airflow, kubernetes-validate, PyYAML), when installed.
fn ops_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("OPS_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/marnflow/ops-venv")))?;
    venv.join("bin/python").exists().then_some(venv)
}

/// A Python that can `import module`: the venv's, else python3.
fn python_with(module: &str) -> Option<PathBuf> {
    let candidates = ops_venv().map(|v| v.join("bin/python")).into_iter().chain(["python3".into()]);
    candidates
        .into_iter()
        .find(|p| Command::new(p).args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success()))
}

/// Runs `bash ops/marnflow-daily.sh args…`.
fn wrapper(args: &[&str]) -> Output {
    clean("bash").arg(repo().join("ops/marnflow-daily.sh")).args(args).output().expect("bash runs")
}

/// The wrapper as a scheduler starts it (`args` taken from a unit, the cron line or the CronJob),
/// with its folders moved under `tmp`, as a dry run for 2026-01-02: it must accept every flag.
fn wrapper_accepts(origin: &str, args: &[String], tmp: &Path) {
    let mut args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("/var/lib/marnflow") || a.starts_with("/state") || a.starts_with("/etc/marnflow") {
                tmp.join(a.trim_start_matches('/')).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    args.extend(["--bin", bin(), "--until", "2026-01-02", "--dry-run"].map(String::from));
    let out = wrapper(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let all = text(&out);
    assert!(out.status.success(), "{origin}: the wrapper refuses {args:?}:\n{all}");
    assert!(all.contains(&format!("{} run --date 2026-01-02 --model ctr --json --promote-if-better", bin())), "{all}");
}

/// The path of `script` (an absolute path under INSTALL) inside this repository; asserts it
/// exists and is executable.
fn installed_script(origin: &str, script: &str) -> PathBuf {
    let rel = script.strip_prefix(INSTALL).unwrap_or_else(|| panic!("{origin}: {script} is not under {INSTALL}"));
    let path = repo().join(rel);
    let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{origin}: {script} → {}: {e}", path.display()));
    use std::os::unix::fs::PermissionsExt;
    assert!(meta.permissions().mode() & 0o111 != 0, "{origin}: {} is not executable", path.display());
    path
}

// ---------------------------------------------------------------------------------------------
// systemd

/// A unit file as (section, key) → values, in order.
fn unit_file(text: &str) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not key=value: {line}"));
        out.entry((section.clone(), k.trim().to_string())).or_default().push(v.trim().to_string());
    }
    out
}

fn one<'a>(unit: &'a BTreeMap<(String, String), Vec<String>>, section: &str, key: &str) -> &'a str {
    match unit.get(&(section.to_string(), key.to_string())).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("[{section}] {key}: expected one value, found {other:?}"),
    }
}

/// `systemd-analyze verify` of the units in `dir`: its whole output (empty when clean).
fn systemd_verify(dir: &Path) -> (bool, String) {
    let units = ["marnflow-daily.service", "marnflow-daily.timer"].map(|u| dir.join(u));
    let out = Command::new("systemd-analyze").arg("verify").args(&units).output().unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn systemd_units_start_the_wrapper_every_day_and_catch_up_after_downtime() {
    let (service_text, timer_text) =
        (read("ops/systemd/marnflow-daily.service"), read("ops/systemd/marnflow-daily.timer"));
    let (service, timer) = (unit_file(&service_text), unit_file(&timer_text));
    // The timer: daily, persistent (a start missed while off happens at boot), for the service.
    assert_eq!(one(&timer, "Timer", "Persistent"), "true");
    assert_eq!(one(&timer, "Timer", "Unit"), "marnflow-daily.service");
    assert_eq!(one(&timer, "Install", "WantedBy"), "timers.target");
    let calendar = one(&timer, "Timer", "OnCalendar");
    // The service: a oneshot running the wrapper of this repository.
    assert_eq!(one(&service, "Service", "Type"), "oneshot");
    let exec: Vec<String> = one(&service, "Service", "ExecStart").split_whitespace().map(String::from).collect();
    let script = installed_script("ExecStart", &exec[0]);
    assert!(script.ends_with("ops/marnflow-daily.sh"), "{}", script.display());
    assert!(exec.iter().any(|a| a == "--state-dir"), "the wrapper needs --state-dir: {exec:?}");
    let tmp = tempfile::tempdir().unwrap();
    wrapper_accepts("ExecStart", &exec[1..], tmp.path());
    // The environment it gives marnflow holds only marnflow's own settings.
    for env in service.get(&("Service".into(), "Environment".into())).into_iter().flatten() {
        let name = env.split('=').next().unwrap();
        assert!(DEPLOY_ENV.contains(&name), "{env}");
    }

    if !have("systemd-analyze") {
        return skip("systemd-analyze (unit checks)", "the Debian package systemd: apt-get install -y systemd");
    }
    let calendar_out = Command::new("systemd-analyze").args(["calendar", calendar]).output().unwrap();
    assert!(calendar_out.status.success(), "OnCalendar={calendar}: {}", text(&calendar_out));
    assert!(text(&calendar_out).contains("Next elapse"), "{}", text(&calendar_out));
    // Verify the units with ExecStart pointing at this repository's script.
    let write_units = |dir: &Path, service: &str, timer: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let service = service.replace(&format!("ExecStart={INSTALL}"), &format!("ExecStart={}/", repo().display()));
        std::fs::write(dir.join("marnflow-daily.service"), service).unwrap();
        std::fs::write(dir.join("marnflow-daily.timer"), timer).unwrap();
    };
    let good = tmp.path().join("good");
    write_units(&good, &service_text, &timer_text);
    let (ok, out) = systemd_verify(&good);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify complains:\n{out}");
    // The checker catches a misspelt key and a missing script.
    let bad = tmp.path().join("bad");
    write_units(
        &bad,
        &service_text.replace("ExecStart=/opt/marnflow/ops/", "ExecStart=/opt/marnflow/no/"),
        &timer_text,
    );
    let (ok, out) = systemd_verify(&bad);
    assert!(!ok && out.contains("no/marnflow-daily.sh"), "a missing ExecStart script passed verify:\n{out}");
    write_units(&bad, &service_text, &timer_text.replace("Persistent=", "Persistnt="));
    let (_, out) = systemd_verify(&bad);
    assert!(out.contains("Persistnt"), "a misspelt key passed verify:\n{out}");
}

// ---------------------------------------------------------------------------------------------
// cron

/// Checks one cron time field: `*`, `N`, `A-B`, each with an optional `/STEP`, comma-separated.
fn cron_field(field: &str, lo: u32, hi: u32, names: &[&str]) -> Result<(), String> {
    let value = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + lo);
        }
        let v: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
        (lo..=hi).contains(&v).then_some(v).ok_or_else(|| format!("{v} outside {lo}-{hi}"))
    };
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if let Some(s) = step {
            let s: u32 = s.parse().map_err(|_| format!("step {s:?} is not a number"))?;
            if s == 0 || s > hi {
                return Err(format!("step {s} outside 1-{hi}"));
            }
        }
        match range.split_once('-') {
            _ if range == "*" => {}
            Some((a, b)) => {
                if value(a)? > value(b)? {
                    return Err(format!("range {range} runs backwards"));
                }
            }
            None => {
                value(range)?;
            }
        }
    }
    Ok(())
}

/// Checks a 5-field schedule (no @-macros).
fn cron_schedule(fields: &[&str]) -> Result<(), String> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let [m, h, dom, mon, dow] = fields else { return Err(format!("{} fields, expected 5", fields.len())) };
    cron_field(m, 0, 59, &[]).map_err(|e| format!("minute: {e}"))?;
    cron_field(h, 0, 23, &[]).map_err(|e| format!("hour: {e}"))?;
    cron_field(dom, 1, 31, &[]).map_err(|e| format!("day of month: {e}"))?;
    cron_field(mon, 1, 12, &MONTHS).map_err(|e| format!("month: {e}"))?;
    cron_field(dow, 0, 7, &DAYS).map_err(|e| format!("day of week: {e}"))?;
    Ok(())
}

#[test]
fn the_cron_schedule_parser_rejects_bad_lines() {
    assert!(cron_schedule(&["30", "2", "*", "*", "*"]).is_ok());
    assert!(cron_schedule(&["*/15", "0-6,22", "1", "jan-mar", "mon"]).is_ok());
    for bad in [
        ["60", "2", "*", "*", "*"],
        ["30", "24", "*", "*", "*"],
        ["30", "2", "0", "*", "*"],
        ["30", "2", "*", "13", "*"],
    ] {
        assert!(cron_schedule(&bad).is_err(), "{bad:?} passed");
    }
    assert!(cron_schedule(&["30", "2", "*", "*"]).is_err());
    assert!(cron_schedule(&["*/0", "2", "*", "*", "*"]).is_err());
    assert!(cron_schedule(&["30", "5-2", "*", "*", "*"]).is_err());
}

#[test]
fn the_cron_line_is_valid_and_really_starts_the_wrapper() {
    let file = read("ops/cron/marnflow-daily");
    let mut env = BTreeMap::new();
    let mut jobs = Vec::new();
    for line in file.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let first = line.split_whitespace().next().unwrap();
        match first.split_once('=') {
            Some((k, v)) if !first.starts_with(|c: char| c.is_ascii_digit() || c == '*') => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => jobs.push(line),
        }
    }
    assert_eq!(jobs.len(), 1, "one job line: {jobs:?}");
    // /etc/cron.d format: five time fields, the user, the command.
    let parts: Vec<&str> = jobs[0].split_whitespace().collect();
    assert!(parts.len() > 6, "{}", jobs[0]);
    cron_schedule(&parts[..5]).unwrap_or_else(|e| panic!("{}: {e}", jobs[0]));
    assert_eq!(parts[5], "marnflow", "the job runs as the marnflow user");
    let command = jobs[0].split_once(&format!(" {} ", parts[5])).expect("a command after the user").1.trim();
    assert!(!command.contains('%'), "an unescaped % ends a cron command: {command}");
    assert!(env.get("SHELL").is_some_and(|s| s == "/bin/bash"), "{env:?}");
    for k in env.keys().filter(|k| k.starts_with("MARNFLOW_")) {
        assert!(DEPLOY_ENV.contains(&k.as_str()), "{k}");
    }
    let wrapper_at = command.find("ops/marnflow-daily.sh").expect("the cron line starts ops/marnflow-daily.sh");
    let cd = command.split("&&").next().unwrap().trim();
    let dir = cd.strip_prefix("cd ").expect("the job first changes to the install folder");
    installed_script("cron", &format!("{dir}/{}", &command[wrapper_at..].split_whitespace().next().unwrap()));

    // Run the line itself, with the install, state, log and config folders moved under a
    // temporary one and the wrapper made a dry run for 2026-01-02.
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().display().to_string();
    std::fs::create_dir_all(tmp.path().join("var/log/marnflow")).unwrap();
    let (head, tail) = command.split_at(wrapper_at + "ops/marnflow-daily.sh".len());
    let line = format!("{head} --bin {} --until 2026-01-02 --dry-run{tail}", bin())
        .replace(dir, &repo().display().to_string())
        .replace("/var/", &format!("{t}/var/"))
        .replace("/etc/marnflow", &format!("{t}/etc/marnflow"));
    let mut cmd = clean(env.get("SHELL").unwrap());
    for (k, v) in &env {
        cmd.env(k, v.replace("/var/", &format!("{t}/var/")));
    }
    let out = cmd.arg("-c").arg(&line).output().unwrap();
    let log = std::fs::read_to_string(tmp.path().join("var/log/marnflow/daily.log")).unwrap_or_default();
    assert!(out.status.success(), "the cron command failed: {line}\n{}{log}", text(&out));
    assert!(log.contains("run --date 2026-01-02 --model ctr --json --promote-if-better"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes

/// Every YAML document of `path` as JSON, through Python's PyYAML.
fn yaml_documents(python: &Path, path: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(python)
        .args(["-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{} is not valid YAML:\n{}", path.display(), text(&out));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn the_k8s_cronjob_forbids_overlap_and_takes_credentials_from_secrets() {
    let path = repo().join("ops/k8s/marnflow-daily.yaml");
    let raw = read("ops/k8s/marnflow-daily.yaml");
    assert!(!raw.contains("AKIA") && !raw.to_lowercase().contains("aws_secret_access_key:"), "a literal credential?");
    let Some(python) = python_with("yaml") else {
        return skip("PyYAML (Kubernetes manifest)", "python3 with PyYAML: pip install pyyaml");
    };
    let docs = yaml_documents(&python, &path);
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in the manifest"));
    let cron = kind("CronJob");
    assert_eq!(cron["apiVersion"], "batch/v1");
    let spec = &cron["spec"];
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    let schedule: Vec<&str> = spec["schedule"].as_str().unwrap().split_whitespace().collect();
    cron_schedule(&schedule).unwrap_or_else(|e| panic!("schedule: {e}"));
    let job = &spec["jobTemplate"]["spec"];
    assert!(job["backoffLimit"].as_u64().is_some_and(|b| b <= 6), "backoffLimit: {}", job["backoffLimit"]);
    let pod = &job["template"]["spec"];
    assert!(["Never", "OnFailure"].contains(&pod["restartPolicy"].as_str().unwrap()));
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    for (kind, what) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
        assert!(c["resources"][kind][what].is_string(), "resources.{kind}.{what} missing");
    }
    // Credentials only through secret references.
    for e in c["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let secret = ["KEY", "SECRET", "TOKEN", "PASSWORD"].iter().any(|s| name.contains(s));
        if secret {
            assert!(e.get("value").is_none(), "{name} has a literal value");
            assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{name} is not from a secret");
        }
        if name.starts_with("MARNFLOW_") {
            assert!(DEPLOY_ENV.contains(&name), "{name}");
        }
    }
    // The wrapper of this repository, with flags it accepts, its state on the claim defined here.
    let command: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
    assert!(installed_script("CronJob", &command[0]).ends_with("ops/marnflow-daily.sh"));
    let tmp = tempfile::tempdir().unwrap();
    wrapper_accepts("CronJob", &[&command[1..], &args[..]].concat(), tmp.path());
    let state = &args[args.iter().position(|a| a == "--state-dir").expect("--state-dir") + 1];
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == state.as_str()).unwrap();
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], kind("PersistentVolumeClaim")["metadata"]["name"]);

    let Some(validate) = kubernetes_validate(&path) else { return };
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, raw.replace("concurrencyPolicy:", "concurrencypolicy:")).unwrap();
    let out = Command::new(&validate).arg("--strict").arg(&bad).output().unwrap();
    assert!(
        !out.status.success() && text(&out).contains("concurrencypolicy"),
        "a misspelt key passed:\n{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Airflow

/// `check_dag.py` on `dag` with `python`: (success, the JSON it printed, all output).
fn check_dag(python: &Path, dag: &Path, extra: &[&str], airflow_home: &Path) -> (bool, serde_json::Value, String) {
    let out = Command::new(python)
        .arg(repo().join("ops/airflow/check_dag.py"))
        .arg(dag)
        .args(extra)
        .env("AIRFLOW_HOME", airflow_home)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout.lines().rev().find_map(|l| serde_json::from_str(l).ok()).unwrap_or_default();
    (out.status.success(), json, text(&out))
}

#[test]
fn the_airflow_dag_runs_each_day_once_in_order_with_retries_and_its_command_works() {
    let dag = repo().join("ops/airflow/marnflow_daily.py");
    let tmp = tempfile::tempdir().unwrap();
    if !have("python3") {
        return skip("python3 (DAG checks)", "python3");
    }
    let (ok, json, all) = check_dag("python3".as_ref(), &dag, &[], tmp.path());
    assert!(ok, "check_dag.py:\n{all}");
    for needed in
        ["py_compile", "catchup=True", "max_active_runs=1", "depends_on_past=True", "command has run --date {{ ds }}"]
    {
        assert!(json["passed"].as_array().unwrap().iter().any(|p| p == needed), "{needed} not checked: {json}");
    }
    // The checker rejects a DAG without catchup.
    let bad = tmp.path().join("bad_dag.py");
    std::fs::write(&bad, read("ops/airflow/marnflow_daily.py").replace("catchup=True", "catchup=False")).unwrap();
    let (ok, _, all) = check_dag("python3".as_ref(), &bad, &[], tmp.path());
    assert!(!ok && all.contains("catchup"), "{all}");

    // The command of a day, rendered as Airflow does (Jinja), really runs that day.
    if let Some(python) = python_with("jinja2") {
        let lake = tmp.path().join("lake");
        let params = [format!("marnflow={}", bin()), format!("lake={}", lake.display())];
        let (ok, json, all) =
            check_dag(&python, &dag, &["--ds", "2026-01-01", "--param", &params[0], "--param", &params[1]], tmp.path());
        assert!(ok, "{all}");
        let rendered = json["rendered"].as_str().expect("a rendered command").to_string();
        assert!(rendered.contains("run --date 2026-01-01") && rendered.ends_with("--promote-if-better"), "{rendered}");
        tiny_world(&lake, 21);
        let config = tmp.path().join("small.toml");
        std::fs::write(&config, SMALL).unwrap();
        let out = clean("bash").arg("-c").arg(&rendered).env("MARNFLOW_CONFIG", &config).output().unwrap();
        assert!(out.status.success(), "{rendered}:\n{}", text(&out));
        assert!(text(&out).contains("2026-01-01: trained ctr@v1"), "{}", text(&out));
        assert!(text(&out).contains("production → v1"), "{}", text(&out));
        // params.promote=false leaves the flag out.
        let (_, json, _) = check_dag(&python, &dag, &["--ds", "2026-01-02", "--param", "promote=false"], tmp.path());
        assert!(!json["rendered"].as_str().unwrap().contains("--promote-if-better"), "{json}");
    } else {
        skip("jinja2 (rendering and running the DAG's command)", "python3 with Jinja2: pip install jinja2");
    }

    let Some(venv) = ops_venv() else {
        return skip(
            "Apache Airflow (DagBag load and timetable check)",
            "apache-airflow in ~/.cache/marnflow/ops-venv",
        );
    };
    let python = venv.join("bin/python");
    let (ok, json, all) = check_dag(&python, &dag, &["--airflow"], tmp.path());
    assert!(ok, "Airflow rejects the DAG:\n{all}");
    assert!(json["passed"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p.as_str().unwrap().starts_with("first run: ds 2026-01-01")));
    // The checker catches a schedule whose ds is the trigger day (Airflow 3's cron default).
    std::fs::write(
        &bad,
        read("ops/airflow/marnflow_daily.py")
            .replace(r#"CronDataIntervalTimetable("30 2 * * *", timezone="UTC")"#, r#""30 2 * * *""#),
    )
    .unwrap();
    let (ok, json, all) = check_dag(&python, &bad, &["--airflow"], tmp.path());
    let airflow3 = json["airflow"].as_str().is_some_and(|v| v.starts_with('3'));
    assert!(!airflow3 || (!ok && all.contains("before that day is over")), "{all}");
}

// ---------------------------------------------------------------------------------------------
// The wrapper, for real

fn last_success(state: &Path) -> String {
    std::fs::read_to_string(state.join("ctr/last-success")).unwrap_or_default().trim().to_string()
}

#[test]
fn the_daily_wrapper_catches_up_missed_days_in_order_and_stops_at_a_failed_day() {
    let tmp = tempfile::tempdir().unwrap();
    let (lake, state, config) = (tmp.path().join("lake"), tmp.path().join("state"), tmp.path().join("small.toml"));
    tiny_world(&lake, 17);
    std::fs::write(&config, SMALL).unwrap();
    let (l, s, c) = (lake.to_str().unwrap(), state.to_str().unwrap(), config.to_str().unwrap());
    let daily = |extra: &[&str]| {
        let mut args = vec!["--state-dir", s, "--bin", bin(), "--lake", l, "--config", c];
        args.extend_from_slice(extra);
        wrapper(&args)
    };

    // No state yet: only the day asked for.
    let out = daily(&["--until", "2026-01-01"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_success(&state), "2026-01-01");
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("ctr/outcomes/2026-01-01.json")).unwrap()).unwrap();
    assert_eq!(outcome["promoted"], true);

    // Day 3's exposures have not landed: day 2 runs, day 3 fails, day 4 waits.
    let hidden = tmp.path().join("late-exposures");
    std::fs::rename(lake.join("raw/exposures/dt=2026-01-03"), &hidden).unwrap();
    let out = daily(&["--until", "2026-01-04"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("2026-01-03: FAILED") && all.contains("later days not run"), "{all}");
    assert!(all.contains("click with no matching exposure"), "marnflow's reason is shown: {all}");
    assert_eq!(last_success(&state), "2026-01-02");
    assert!(
        !state.join("ctr/outcomes/2026-01-03.json").exists() && !state.join("ctr/outcomes/2026-01-04.json").exists()
    );

    // The logs land; the next start (one, as after downtime) catches up both missed days.
    std::fs::rename(&hidden, lake.join("raw/exposures/dt=2026-01-03")).unwrap();
    let out = daily(&["--until", "2026-01-04"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("2 day(s) to run: 2026-01-03 .. 2026-01-04"), "{all}");
    assert_eq!(last_success(&state), "2026-01-04");
    let outcome: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("ctr/outcomes/2026-01-04.json")).unwrap()).unwrap();
    assert!(outcome["plan"]["warm_start"].is_u64(), "day 4 warm-starts from production: {outcome}");
    let versions = |lake: &str| ok(&["--lake", lake, "models", "list", "--json"]);
    let before = versions(l);

    // Up to date: nothing runs. Too many days due: refused. An explicit range: rerun (dry run).
    let out = daily(&["--until", "2026-01-04"]);
    assert!(out.status.success() && text(&out).contains("up to date"), "{}", text(&out));
    assert_eq!(versions(l), before);
    let out = daily(&["--until", "2026-03-01"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("more than --max-days 31"), "{}", text(&out));
    let out = daily(&["--from", "2026-01-03", "--until", "2026-01-04", "--dry-run"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches(" run --date 2026-01-0").count(), 2);
    let out = daily(&["--until", "2026-02-30"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A second start while one runs exits at once without running anything.
    if have("flock") {
        let mut holder = Command::new("flock").arg(state.join("ctr/lock")).args(["sleep", "30"]).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = daily(&["--until", "2026-01-05"]);
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(out.status.success() && text(&out).contains("another run holds"), "{}", text(&out));
        assert_eq!(last_success(&state), "2026-01-04");
    } else {
        skip("flock (the wrapper's lock)", "the Debian package util-linux");
    }
}

// ---------------------------------------------------------------------------------------------
// The runbook

/// Global flags that take a value.
const GLOBAL_VALUE_FLAGS: [&str; 3] = ["--lake", "--config", "--log-format"];

#[test]
fn every_command_of_the_runbook_uses_real_subcommands_and_flags() {
    let runbook = read("ops/RUNBOOK.md");
    let wrapper_usage = read("ops/marnflow-daily.sh");
    let mut help_cache: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut checked = 0;
    let mut in_block = false;
    for line in runbook.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let line = line.split(" #").next().unwrap().trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first() {
            Some(&"marnflow") => {}
            Some(w) if w.ends_with("ops/marnflow-daily.sh") => {
                for flag in words.iter().filter(|w| w.starts_with("--")) {
                    assert!(wrapper_usage.contains(*flag), "RUNBOOK: the wrapper has no {flag}: {line}");
                }
                checked += 1;
                continue;
            }
            _ => continue,
        }
        // marnflow [global flags] sub [sub] [args…]
        let mut i = 1;
        let mut path = Vec::new();
        while i < words.len() {
            let w = words[i];
            if GLOBAL_VALUE_FLAGS.contains(&w) {
                i += 2;
            } else if w.starts_with('-') {
                i += 1;
            } else if path.len() < 2 && w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                let mut candidate = path.clone();
                candidate.push(w.to_string());
                if !help_cache.contains_key(&candidate) {
                    let out = run(&candidate.iter().map(String::as_str).chain(["--help"]).collect::<Vec<_>>());
                    if !out.status.success() {
                        break;
                    }
                    help_cache.insert(candidate.clone(), String::from_utf8_lossy(&out.stdout).to_string());
                }
                path = candidate;
                i += 1;
            } else {
                break;
            }
        }
        assert!(!path.is_empty(), "RUNBOOK: no marnflow subcommand in: {line}");
        let help = &help_cache[&path];
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                "RUNBOOK: `marnflow {}` has no {flag}: {line}",
                path.join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} commands found in ops/RUNBOOK.md");
}

#[test]
fn the_ablation_script_prints_table_3_as_mean_and_spread_over_seeds() {
    if !have("jq") {
        return skip("jq (ops/ablation.sh)", "jq: apt-get install -y jq");
    }
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("tiny.toml");
    std::fs::write(
        &config,
        format!(
            "{SMALL}[generate]\nusers = 100\nitems = 300\ndays = 3\nimage_dim = 16\nexposures_per_day = 1000\n\
             categories = 4\nshops = 20\nbrands = 20\nvocab_size = 200\n"
        ),
    )
    .unwrap();
    let lake = tmp.path().join("lake");
    let args = ["--config", config.to_str().unwrap(), "--lake", lake.to_str().unwrap(), "--bin", bin()];
    let run = |extra: &[&str]| {
        let out = Command::new("bash")
            .arg(repo().join("ops/ablation.sh"))
            .args(args)
            .args(["--seeds", "1 2", "--epochs", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let table = run(&["--variants", "ids maf_ddma"]);
    let row = |variant: &str| -> Vec<String> {
        let line =
            table.lines().find(|l| l.starts_with(&format!("| {variant} |"))).unwrap_or_else(|| panic!("{table}"));
        line.split('|').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect()
    };
    let (ids, ddma) = (row("ids"), row("maf_ddma"));
    assert!(ids[1].contains(" ± ") && ddma[1].contains(" ± "), "AUC as mean ± sd: {table}");
    assert_eq!(ids[4], "-", "ids has no D0: {table}");
    assert!(ddma[4].contains(" ± ") && ddma[5].contains(" ± "), "maf_ddma reports its game: {table}");
    assert!(ids[7].contains(" ± "), "training speed as mean ± sd: {table}");
    assert_eq!(std::fs::read_to_string(lake.join("ablation/table3.md")).unwrap(), table);
    // A second run keeps the runs done and adds only the new variant, into the table named.
    let again = run(&["--variants", "ids", "--table", "table2"]);
    assert!(again.lines().any(|l| l == table.lines().find(|l| l.starts_with("| ids |")).unwrap()), "{again}");
    assert_eq!(std::fs::read_to_string(lake.join("ablation/table2.md")).unwrap(), again);
}

#[test]
fn the_duckdb_peer_builds_the_same_feature_tables_and_the_benchmark_prints_the_ratio() {
    if !Path::new("/usr/bin/time").exists() {
        return skip("GNU time (ops/bench-peers.sh)", "the Debian package time: apt-get install -y time");
    }
    let setup = Command::new("bash").arg(repo().join("ops/setup-peers.sh")).arg("--python").output().unwrap();
    if !setup.status.success() {
        return skip("DuckDB (ops/bench-peers.sh features)", "the peers' venv: bash ops/setup-peers.sh");
    }
    let python = String::from_utf8_lossy(&setup.stdout).trim().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("ops/bench-peers.sh"))
        .args(["features", "--runs", "1", "--days", "4", "--users", "150", "--items", "300"])
        .args(["--exposures-per-day", "1500", "--lake", tmp.path().to_str().unwrap(), "--bin", bin()])
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for table in ["labels", "samples", "item_stat_buckets", "user_history", "dictionary item", "dictionary token"] {
        assert!(all.lines().any(|l| l.starts_with(&format!("{table}: ")) && l.ends_with(": equal")), "{table}: {all}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ratio = stdout.lines().find(|l| l.contains("speed ÷ DuckDB's")).unwrap_or_else(|| panic!("{stdout}"));
    let value: f64 = ratio.split("**").nth(3).and_then(|v| v.trim_end_matches('×').parse().ok()).unwrap();
    assert!(value > 0.0, "{ratio}");

    // The check fails on a single changed history.
    let runs = tmp.path().join("u150-i300-e1500-d4/runs");
    let peer = runs.join("duckdb");
    let part = peer.join("features/samples/dt=2026-01-03/part-00000.parquet");
    let script = format!(
        "import duckdb; db = duckdb.connect(); db.execute(\"COPY (SELECT * REPLACE (CASE WHEN row_number() OVER () = 7 \
         THEN list_reverse(hist_item_ids) || ['elsewhere'] ELSE hist_item_ids END AS hist_item_ids) FROM read_parquet('{p}', hive_partitioning = false)) \
         TO '{p}.new' (FORMAT parquet)\")",
        p = part.display()
    );
    let edit = Command::new(&python).args(["-c", &script]).output().unwrap();
    assert!(edit.status.success(), "{}", text(&edit));
    std::fs::rename(part.with_extension("parquet.new"), &part).unwrap();
    let check = Command::new(&python)
        .arg(repo().join("ops/peers/check_features.py"))
        .args(["--marnflow", runs.join("marnflow").to_str().unwrap(), "--peer", peer.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!check.status.success(), "a changed history must fail the check: {}", text(&check));
    assert!(
        text(&check).contains("samples: 6000 rows, 1 only in marnflow's, 1 only in the peer's: DIFFERENT"),
        "{}",
        text(&check)
    );
}

// ---------------------------------------------------------------------------------------------
// The Ballista cluster of the feature SQL (ops/systemd/marnflow-cluster-*, ops/k8s/marnflow-cluster.yaml)

/// Every `--flag` of a `marnflow SUBCOMMAND …` command line exists for that subcommand, named by
/// the first `words` arguments (`stream`: 1; `cluster executor`: 2).
fn command_is_real(what: &str, argv: &[String], words: usize) {
    assert!(argv[0].ends_with("/marnflow"), "{what}: not the marnflow binary: {argv:?}");
    let sub: Vec<&str> = argv[1..=words].iter().map(String::as_str).collect();
    let out = run(&[sub.as_slice(), &["--help"]].concat());
    assert!(out.status.success(), "marnflow {sub:?} --help: {}", text(&out));
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    for flag in argv.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "{what}: `marnflow {}` has no {flag}", sub.join(" "));
    }
}

/// Every `--flag` of a `marnflow cluster ROLE …` command line exists for that role.
fn cluster_command_is_real(what: &str, argv: &[String]) {
    assert_eq!(argv[1], "cluster", "{what}: {argv:?}");
    let role = argv[2].as_str();
    assert!(["scheduler", "executor"].contains(&role), "{what}: {argv:?}");
    command_is_real(what, argv, 2);
    if role == "executor" {
        assert!(argv.iter().any(|a| a == "--work-dir"), "{what}: an executor needs --work-dir");
    }
}

#[test]
fn the_cluster_units_and_manifest_start_real_scheduler_and_executor_processes() {
    let units = ["marnflow-cluster-scheduler.service", "marnflow-cluster-executor@.service"];
    for unit in units {
        let text_of = read(&format!("ops/systemd/{unit}"));
        let parsed = unit_file(&text_of);
        let exec: Vec<String> = one(&parsed, "Service", "ExecStart").split_whitespace().map(String::from).collect();
        cluster_command_is_real(unit, &exec);
        assert_eq!(one(&parsed, "Service", "Restart"), "always", "{unit}");
    }
    if have("systemd-analyze") {
        let tmp = tempfile::tempdir().unwrap();
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_marnflow"));
        let write = |name: &str, text: &str| {
            std::fs::write(tmp.path().join(name), text.replace("/usr/local/bin/marnflow", binary.to_str().unwrap()))
                .unwrap();
        };
        for unit in units {
            write(unit, &read(&format!("ops/systemd/{unit}")));
        }
        write("marnflow-cluster-executor@sched.service", &read("ops/systemd/marnflow-cluster-executor@.service"));
        let verify = |names: &[&str]| {
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .args(names.iter().map(|n| tmp.path().join(n)))
                .output()
                .unwrap();
            (out.status.success(), text(&out))
        };
        let (ok, out) = verify(&["marnflow-cluster-scheduler.service", "marnflow-cluster-executor@sched.service"]);
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify complains:\n{out}");
        write("bad.service", &read("ops/systemd/marnflow-cluster-scheduler.service").replace("Restart=", "Restrt="));
        let (_, out) = verify(&["bad.service"]);
        assert!(out.contains("Restrt"), "a misspelt key passed verify:\n{out}");
    } else {
        skip("systemd-analyze (unit checks)", "the Debian package systemd: apt-get install -y systemd");
    }

    let Some(docs) = manifest("ops/k8s/marnflow-cluster.yaml") else { return };
    for (kind, role) in [("Deployment", "scheduler"), ("StatefulSet", "executor")] {
        let argv = workload_argv(&docs, kind);
        assert_eq!(argv[2], role, "{kind}: {argv:?}");
        cluster_command_is_real(kind, &argv);
    }
    kubernetes_validate(&repo().join("ops/k8s/marnflow-cluster.yaml"));
}

/// The documents of the Kubernetes manifest at `rel`, or `None` (skipped) without PyYAML.
fn manifest(rel: &str) -> Option<Vec<serde_json::Value>> {
    let Some(python) = python_with("yaml") else {
        skip("PyYAML (Kubernetes manifest)", "python3 with PyYAML: pip install pyyaml");
        return None;
    };
    Some(yaml_documents(&python, &repo().join(rel)))
}

/// The command line of the first container of the workload of kind `kind` in `docs`, once its
/// credentials are checked to come from secrets.
fn workload_argv(docs: &[serde_json::Value], kind: &str) -> Vec<String> {
    let doc = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in the manifest"));
    let c = &doc["spec"]["template"]["spec"]["containers"][0];
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        if ["KEY", "SECRET", "TOKEN", "PASSWORD"].iter().any(|s| name.contains(s)) {
            assert!(e["valueFrom"]["secretKeyRef"]["name"].is_string(), "{kind}: {name} is not from a secret");
        }
    }
    let command: Vec<String> = serde_json::from_value(c["command"].clone()).unwrap();
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
    [command, args].concat()
}

// The stream (ops/systemd/marnflow-stream.service, ops/k8s/marnflow-stream.yaml)

#[test]
fn the_stream_unit_and_deployment_run_one_real_stream_that_restarts() {
    let unit = unit_file(&read("ops/systemd/marnflow-stream.service"));
    let exec: Vec<String> = one(&unit, "Service", "ExecStart").split_whitespace().map(String::from).collect();
    assert_eq!(exec[1], "stream", "{exec:?}");
    command_is_real("marnflow-stream.service", &exec, 1);
    assert_eq!(one(&unit, "Service", "Restart"), "always");
    assert_eq!(one(&unit, "Service", "Environment"), "MARNFLOW_LOG_FORMAT=json", "health and lag in JSON lines");
    if have("systemd-analyze") {
        let tmp = tempfile::tempdir().unwrap();
        let binary = env!("CARGO_BIN_EXE_marnflow");
        let unit_text = read("ops/systemd/marnflow-stream.service")
            .replace("/usr/local/bin/marnflow", binary)
            .replace("WorkingDirectory=/opt/marnflow", &format!("WorkingDirectory={}", tmp.path().display()));
        std::fs::write(tmp.path().join("marnflow-stream.service"), unit_text).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(tmp.path().join("marnflow-stream.service"))
            .output()
            .unwrap();
        assert!(
            out.status.success() && text(&out).trim().is_empty(),
            "systemd-analyze verify complains:\n{}",
            text(&out)
        );
    } else {
        skip("systemd-analyze (unit checks)", "the Debian package systemd: apt-get install -y systemd");
    }

    let Some(docs) = manifest("ops/k8s/marnflow-stream.yaml") else { return };
    let doc = docs.iter().find(|d| d["kind"] == "Deployment").expect("a Deployment");
    assert_eq!(doc["spec"]["replicas"], 1, "two streams would build the same days");
    assert_eq!(doc["spec"]["strategy"]["type"], "Recreate", "a rollout must not run two streams at once");
    command_is_real("the Deployment", &workload_argv(&docs, "Deployment"), 1);
    kubernetes_validate(&repo().join("ops/k8s/marnflow-stream.yaml"));
}

/// `kubernetes-validate --strict` of the manifest at `path` against Kubernetes 1.27 (timeZone is
/// GA since then) and the newest schema; the checker's path, or `None` (skipped) when it is not
/// installed.
fn kubernetes_validate(path: &Path) -> Option<PathBuf> {
    let Some(validate) = ops_venv().map(|v| v.join("bin/kubernetes-validate")).filter(|p| p.exists()) else {
        skip(
            "kubernetes-validate (schema check of the manifest)",
            "kubernetes-validate: pip install kubernetes-validate",
        );
        return None;
    };
    for version in ["1.27.0", "1.37.0"] {
        let out = Command::new(&validate).args(["--strict", "-k", version]).arg(path).output().unwrap();
        assert!(out.status.success(), "kubernetes-validate {version}:\n{}", text(&out));
    }
    Some(validate)
}
