//! The lake on S3: every command against a real S3-compatible server, compared with the same
//! world on a local disk (the pipeline is deterministic, so the results must agree).
//!
//! `.ci/run` starts the server with `ops/s3-server.sh` (moto, on loopback) and exports
//! `MARNFLOW_TEST_S3_ENDPOINT`, `MARNFLOW_TEST_S3_BUCKET` and the `AWS_*` credentials; without
//! `MARNFLOW_TEST_S3_ENDPOINT` the test says so and passes. Each run works under a fresh prefix
//! of the bucket.

use std::collections::BTreeMap;
use std::process::{Command, Output};

use marnflow_pipeline::lake::{Lake, STAGING};
use marnflow_registry::Registry;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::util::*;

/// The server and the settings every S3 command of this test runs with.
struct S3 {
    env: BTreeMap<String, String>,
    secret: String,
    bucket: String,
    /// Every stdout and stderr of the commands run against the server, to check for secrets.
    seen: std::cell::RefCell<Vec<String>>,
}

impl S3 {
    fn from_env() -> Option<Self> {
        let endpoint = std::env::var("MARNFLOW_TEST_S3_ENDPOINT").ok().filter(|e| !e.is_empty())?;
        let var = |k: &str, default: &str| std::env::var(k).ok().filter(|v| !v.is_empty()).unwrap_or(default.into());
        let secret = var("AWS_SECRET_ACCESS_KEY", "marnflow-test-secret-0b9d4f7e2a61c3d8");
        let env: BTreeMap<String, String> = [
            ("AWS_ENDPOINT_URL", endpoint),
            ("AWS_ALLOW_HTTP", "true".to_string()),
            ("AWS_REGION", var("AWS_REGION", "us-east-1")),
            ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "MARNFLOWTEST")),
            ("AWS_SECRET_ACCESS_KEY", secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let bucket = var("MARNFLOW_TEST_S3_BUCKET", "marnflow-test");
        Some(Self { env, secret, bucket, seen: Default::default() })
    }

    /// A `marnflow` command against the server: these settings only, debug logs on (they must
    /// not show the secret either).
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = marnflow();
        for k in ["AWS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN"] {
            cmd.env_remove(k);
        }
        cmd.envs(&self.env).env("RUST_LOG", "debug").args(args);
        cmd
    }

    fn record(&self, args: &[&str], out: &Output) -> (String, String) {
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string());
        self.seen.borrow_mut().push(format!("marnflow {args:?}\n{stdout}\n{stderr}"));
        (stdout, stderr)
    }

    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.command(args).output().expect("the marnflow binary runs");
        let (stdout, stderr) = self.record(args, &out);
        (out.status.code(), stdout, stderr)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, stdout, stderr) = self.run(args);
        assert_eq!(code, Some(0), "marnflow {args:?} failed:\n{}", tail(&stderr));
        stdout
    }

    /// The lake's handle in this process (for reading objects and racing the registry).
    fn lake(&self, uri: &str) -> Lake {
        Lake::open_with_env(uri, &self.env).expect("the S3 lake opens")
    }
}

/// The last lines of a debug log, for failure messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// `a` then `b`.
fn cat<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    a.iter().chain(b).copied().collect()
}

/// Runs the same command on the local lake and on the S3 lake; returns (local, s3) stdout.
fn both(s3: &S3, local: &[&str], remote: &[&str], args: &[&str]) -> (String, String) {
    (ok(&cat(local, args)), s3.ok(&cat(remote, args)))
}

// Over 120 lines on purpose: one end-to-end scenario whose steps build on each other; split,
// each part would have to rebuild the lake the previous parts left.
#[test]
fn every_command_works_on_an_s3_lake_as_on_a_local_one() {
    let Some(s3) = S3::from_env() else {
        eprintln!("skipping: MARNFLOW_TEST_S3_ENDPOINT is unset; .ci/run starts a server with ops/s3-server.sh");
        return;
    };
    let started = std::time::Instant::now();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let prefix = format!("t{}-{nanos}", std::process::id());
    let uri = format!("s3://{}/{prefix}/lake", s3.bucket);
    let dir = tempfile::tempdir().unwrap();
    let local_lake = dir.path().join("lake");
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).unwrap();
    let (cfg, ll) = (config.to_str().unwrap(), local_lake.to_str().unwrap());
    let local = ["--lake", ll, "--config", cfg];
    let remote = ["--lake", uri.as_str(), "--config", cfg];

    // generate: the same world, the same summary.
    let world = cat(
        &["generate", "--users", "150", "--items", "400", "--days", "4", "--image-dim", "16"],
        &["--exposures-per-day", "3000", "--seed", "17", "--json"],
    );
    let (l, r) = both(&s3, &local, &remote, &world);
    assert_eq!(summary(&l), summary(&r));

    // sql: the same tables and rows.
    let tables = "SELECT table_schema, table_name FROM information_schema.tables \
                  WHERE table_schema <> 'information_schema' ORDER BY 1, 2";
    let (l, r) = both(&s3, &local, &remote, &["sql", "--format", "csv", tables]);
    assert_eq!(l, r);
    assert!(r.contains("raw,exposures") && r.contains("truth,categories"), "{r}");
    let counts = "SELECT dt, count(*) AS n FROM raw.exposures GROUP BY dt ORDER BY dt";
    let (l, r) = both(&s3, &local, &remote, &["sql", "--format", "csv", counts]);
    assert_eq!(l, r);
    assert_eq!(r.lines().count(), 5, "a header and 4 days: {r}");

    // features: the same counts, the same bytes; a rerun of a day gives it again.
    let (l, r) = both(&s3, &local, &remote, &["features", "--from", "2026-01-01", "--to", "2026-01-04", "--json"]);
    assert_eq!(summary(&l), summary(&r));
    let rerun = summary(&s3.ok(&cat(&remote, &["features", "--date", "2026-01-04", "--json"])));
    assert_eq!(rerun[0], summary(&r)[3]);
    let lake = s3.lake(&uri);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for file in ["features/samples/dt=2026-01-04/part-00000.parquet", "raw/exposures/dt=2026-01-02/part-00000.parquet"]
    {
        let remote_bytes = runtime.block_on(lake.get(file)).unwrap();
        assert!(std::fs::read(local_lake.join(file)).unwrap() == remote_bytes, "{file} differs between the lakes");
    }
    // Files are written in place on S3: nothing ever goes through _staging/.
    let staged = runtime.block_on(lake.store().list_with_delimiter(Some(&lake.path(STAGING)))).unwrap();
    assert!(staged.objects.is_empty() && staged.common_prefixes.is_empty(), "{staged:?}");

    // train and evaluate: the same model, the same metrics.
    let train = ["train", "--model", "ctr", "--from", "2026-01-01", "--to", "2026-01-03", "--variant", "ids", "--json"];
    let (l, r) = both(&s3, &local, &remote, &train);
    let (lt, rt) = (summary(&l), summary(&r));
    assert_eq!((rt["version"].as_u64(), rt["samples"].as_u64()), (Some(1), lt["samples"].as_u64()), "{rt}");
    assert!((f(&lt, "final_ctr_loss") - f(&rt, "final_ctr_loss")).abs() < 1e-6, "{lt} vs {rt}");
    let evaluate = ["evaluate", "--model", "ctr@v1", "--date", "2026-01-04", "--json"];
    let (l, r) = both(&s3, &local, &remote, &evaluate);
    let (le, re) = (summary(&l), summary(&r));
    assert_eq!(le["rows"], re["rows"]);
    for key in ["auc", "logloss", "oracle_auc"] {
        assert!((f(&le, key) - f(&re, key)).abs() < 1e-9, "{key}: {} vs {}", f(&le, key), f(&re, key));
    }

    // models: two more versions; two promotes race from the same state.
    // Different epochs make different runs (the same run again returns the version it made).
    for epochs in ["1", "2"] {
        let lr = ["train", "--model", "ctr", "--from", "2026-01-01", "--to", "2026-01-03", "--variant", "lr"];
        s3.ok(&cat(&cat(&remote, &lr), &["--epochs", epochs]));
    }
    s3.ok(&cat(&remote, &["models", "promote", "ctr@v1", "--to", "production", "--reason", "first"]));
    let racers: Vec<_> = [("ctr@v2", "owner a"), ("ctr@v3", "owner b")]
        .iter()
        .map(|(spec, reason)| {
            let args = cat(&remote, &["models", "promote", spec, "--to", "production", "--reason", reason]);
            let child = s3
                .command(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (args, child)
        })
        .collect();
    let outcomes: Vec<_> = racers
        .into_iter()
        .map(|(args, child)| {
            let out = child.wait_with_output().unwrap();
            let (stdout, stderr) = s3.record(&args, &out);
            (out.status.code(), stdout, stderr)
        })
        .collect();
    let history = s3.ok(&cat(&remote, &["models", "history", "ctr", "--alias", "production"]));
    let wins = outcomes.iter().filter(|o| o.0 == Some(0)).count();
    eprintln!("racing promotes: {wins} of 2 won (2: they did not overlap, and ran one after the other)");
    assert!(wins >= 1, "{outcomes:?}");
    assert_eq!(history.lines().count(), 1 + wins, "one event per winning promote:\n{history}\n{outcomes:?}");
    for (code, _, stderr) in outcomes.iter().filter(|o| o.0 != Some(0)) {
        assert_eq!(*code, Some(1));
        assert!(stderr.contains("same moment") || stderr.contains("someone changed it"), "{}", tail(stderr));
    }
    // Racing in one process from the same known state: exactly one wins, whatever the timing;
    // the loser is refused by the server's conditional create or by the fresh state it read.
    let registry = Registry::new(lake.store().clone(), lake.path("models"));
    for round in 0..3 {
        let current = runtime.block_on(registry.alias("ctr", "production")).unwrap();
        let others: Vec<u32> = [1, 2, 3].into_iter().filter(|v| Some(*v) != current).collect();
        let (a, b) = runtime.block_on(async {
            tokio::join!(
                registry.set_alias("ctr", "production", others[0], current, "race a"),
                registry.set_alias("ctr", "production", others[1], current, "race b"),
            )
        });
        assert!(a.is_ok() != b.is_ok(), "round {round}: exactly one promote wins: {a:?} {b:?}");
    }
    // The conditional create itself, as the registry uses it: If-None-Match on an existing key.
    let key = lake.path("models/ctr/aliases/production/000000000001.json");
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    let again = runtime.block_on(lake.store().put_opts(&key, PutPayload::from_static(b"{}"), create));
    assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
    let before = runtime.block_on(registry.alias_history("ctr", "production")).unwrap();
    let rolled = s3.ok(&cat(&remote, &["models", "rollback", "ctr", "--alias", "production", "--reason", "back"]));
    let last = before.last().unwrap();
    assert!(rolled.contains(&format!("v{} → v{}", last.version, last.previous.unwrap())), "{rolled}");
    let history = s3.ok(&cat(&remote, &["models", "history", "ctr", "--alias", "production"]));
    assert_eq!(history.lines().count(), before.len() + 1, "{history}");
    assert!(history.contains("back") && history.contains("owner"), "{history}");
    let list = summary(&s3.ok(&cat(&remote, &["models", "list", "--json"])));
    assert_eq!(list[0]["versions"], serde_json::json!([1, 2, 3]));
    assert_eq!(list[0]["aliases"]["production"], last.previous.unwrap());

    // run: the daily job, as on a local lake.
    let daily = ["run", "--date", "2026-01-04", "--model", "daily", "--variant", "lr", "--promote-if-better", "--json"];
    let (l, r) = both(&s3, &local, &remote, &daily);
    let (ld, rd) = (summary(&l), summary(&r));
    assert_eq!(ld["plan"], rd["plan"]);
    assert_eq!((rd["train"]["version"].as_u64(), &rd["promoted"]), (Some(1), &serde_json::json!(true)), "{rd}");
    assert!((f(&ld["candidate"], "auc") - f(&rd["candidate"], "auc")).abs() < 1e-9, "{ld} vs {rd}");

    // Serving writes to S3 too.
    let out = format!("s3://{}/{prefix}/out/embeddings.parquet", s3.bucket);
    let said = s3.ok(&cat(&remote, &["export-item-embeddings", "--model", "ctr@v1", "--out", &out]));
    assert!(said.contains("400 item embeddings"), "{said}");

    // Credentials from a profile file instead of the variables.
    let profile = dir.path().join("credentials");
    std::fs::write(
        &profile,
        format!(
            "[marnflow-test]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.env["AWS_ACCESS_KEY_ID"], s3.secret
        ),
    )
    .unwrap();
    let mut cmd = s3.command(&cat(&remote, &["models", "list", "--json"]));
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    cmd.env("AWS_SHARED_CREDENTIALS_FILE", &profile).env("AWS_PROFILE", "marnflow-test");
    let out = cmd.output().unwrap();
    let (stdout, stderr) = s3.record(&["models", "list", "(profile)"], &out);
    assert!(out.status.success(), "{}", tail(&stderr));
    assert!(stderr.contains("S3 credentials from the AWS profile"), "{}", tail(&stderr));
    assert_eq!(summary(&stdout), summary(&s3.ok(&cat(&remote, &["models", "list", "--json"]))));

    // A missing bucket is a clear error.
    let missing = format!("s3://{}-missing-{nanos}/lake", s3.bucket);
    let (code, _, stderr) = s3.run(&["--lake", &missing, "models", "list"]);
    assert_eq!(code, Some(1), "{}", tail(&stderr));
    assert!(stderr.contains("error:") && stderr.contains("NoSuchBucket"), "{}", tail(&stderr));

    // The secret never shows, not even in debug logs.
    for text in s3.seen.borrow().iter() {
        assert!(!text.contains(&s3.secret), "the secret key shows in:\n{}", tail(text));
    }
    eprintln!("s3 test: {:.1} s", started.elapsed().as_secs_f64());
}
