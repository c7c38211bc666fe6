//! The feature SQL on a cluster: Apache DataFusion Ballista.
//!
//! The same `sql/*.sql` jobs run embedded (one process, the default) or on a Ballista cluster
//! (`features.engine = "ballista://HOST:PORT"`): the job's process plans each query and a Ballista
//! scheduler runs it on its executors, which read the lake themselves. Two things differ from the
//! embedded run, and both live here:
//!
//! - **Every input a query reads is a table on the lake.** Ballista serializes a plan to send it;
//!   an in-memory table cannot be serialized, so the tables a day computes in between (the day's
//!   accepted rows, the previous user state, the bucket table, …) are written as Parquet under
//!   `_cluster/<session>/` first ([`Staging`]) and registered from there. The folder is removed when
//!   the day is done. The lake must therefore be one every executor reads at the same address:
//!   a shared path, or S3.
//! - **The scheduler and the executors know marnflow's SQL function** (`ordered_list`), through
//!   [`scheduler`] and [`executor`], which start Ballista's own scheduler and executor with it.
//!   That is what `marnflow cluster scheduler|executor` runs.
//! - **They reach the lake as the job does**: an `s3://` lake's store is built in each of them
//!   from its own environment (`AWS_*`, as [`Lake::open`] reads it) the first time a plan names
//!   the bucket ([`LakeStores`]).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::RecordBatch;
use ballista::prelude::SessionContextExt;
use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{start_executor_process, ExecutorProcessConfig};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::context::SessionContext;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionState;
use datafusion::prelude::{ParquetReadOptions, SessionConfig};
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use url::Url;

use crate::error::{PipelineError, Result};
use crate::lake::Lake;
use crate::lake_write::LakeCodec;

/// Where the feature job's SQL runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Engine {
    /// In this process (DataFusion).
    #[default]
    Embedded,
    /// On the Ballista scheduler at this host and port.
    Ballista { host: String, port: u16 },
}

impl FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "embedded" || s.is_empty() {
            return Ok(Engine::Embedded);
        }
        let bad = || format!("engine {s:?}: give \"embedded\" or \"ballista://HOST:PORT\"");
        let rest = s.strip_prefix("ballista://").ok_or_else(bad)?;
        let (host, port) = rest.trim_end_matches('/').rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        Ok(Engine::Ballista { host: host.to_string(), port })
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Embedded => f.write_str("embedded"),
            Engine::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
        }
    }
}

impl TryFrom<String> for Engine {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

impl From<Engine> for String {
    fn from(e: Engine) -> String {
        e.to_string()
    }
}

/// The lake folder a job on a cluster stages its in-between tables in (see the module's text).
/// Carried in the session's config, so that the code that registers a table finds it.
#[derive(Debug, Clone)]
pub struct Staging {
    lake: Lake,
    folder: String,
    /// The scheduler's URL (`http://HOST:PORT`), where plans built here are sent.
    scheduler: String,
}

impl Staging {
    /// A folder of its own under `_cluster/` for one session of one job on the scheduler at
    /// `host:port`.
    pub fn new(lake: &Lake, job: &str, host: &str, port: u16) -> Self {
        Self {
            lake: lake.clone(),
            folder: format!("_cluster/{job}-{}-{}", std::process::id(), nanos_now()),
            scheduler: format!("http://{host}:{port}"),
        }
    }

    /// A fresh folder inside this staging for a table written by the cluster itself.
    pub fn folder_for(&self, name: &str) -> String {
        format!("{}/{}-{}", self.folder, name.replace('.', "__"), nanos_now())
    }

    /// The staging of `ctx`'s session, if it runs on a cluster.
    pub fn of(ctx: &SessionContext) -> Option<Arc<Staging>> {
        ctx.state().config().get_extension::<Staging>()
    }

    /// Writes `batches` as the table `name` (replacing it) and registers it in `ctx` from there.
    pub async fn register(&self, ctx: &SessionContext, name: &str, batches: &[RecordBatch]) -> Result<()> {
        let folder = format!("{}/{}", self.folder, name.replace('.', "__"));
        let schema = batches.first().map(RecordBatch::schema).ok_or_else(|| {
            PipelineError::Config(vec![format!("staging table {name}: no batches, not even an empty one")])
        })?;
        // A new file each time (a table is replaced during a day), and only that file registered.
        let file = format!("{folder}/part-{}.parquet", nanos_now());
        crate::lake::write_parquet(&self.lake, file.clone(), schema, batches, 1 << 20).await?;
        crate::query::replace_parquet(ctx, name, self.lake.file_url(&file), ParquetReadOptions::default()).await?;
        debug!(table = name, file, "staged");
        Ok(())
    }

    /// Removes the staged files.
    pub async fn remove(&self) -> Result<()> {
        self.lake.remove_all(&self.folder).await
    }
}

/// Nanoseconds since the epoch: what makes the names of the folders a job stages in its own.
pub(crate) fn nanos_now() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// A session on `engine` over `lake`: [`crate::query::new_context`]'s, or the same settings and
/// functions with its queries sent to the Ballista scheduler, staging its tables in a folder of
/// its own named after `job` ([`Staging`]).
pub async fn context(lake: &Lake, engine: &Engine, job: &str) -> Result<SessionContext> {
    let ctx = crate::query::new_context(lake);
    let Engine::Ballista { host, port } = engine else {
        return Ok(ctx);
    };
    let mut state: SessionState = ctx.state();
    let config = std::mem::take(state.config_mut()).upgrade_for_ballista();
    *state.config_mut() = config.with_ballista_adaptive_query_planner(false);
    state.config_mut().set_extension(Arc::new(Staging::new(lake, job, host, *port)));
    let config = std::mem::take(state.config_mut());
    *state.config_mut() = config.with_ballista_physical_extension_codec(Arc::new(LakeCodec::default()));
    let remote = SessionContext::remote_with_state(&format!("df://{host}:{port}"), state).await?;
    // Ballista's session replaces the functions with its defaults: marnflow's come back here.
    crate::sql_functions::register(&remote);
    Ok(remote)
}

/// The scheduler a session on a cluster sends its plans to (`None`: the session is embedded).
pub fn scheduler_of(ctx: &SessionContext) -> Option<String> {
    Staging::of(ctx).map(|s| s.scheduler.clone())
}

/// Runs a physical plan built in this process on the cluster at `scheduler` (Ballista splits it
/// into stages at its repartitions) and returns every output partition's batches.
pub async fn run_physical(
    ctx: &SessionContext,
    scheduler: &str,
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
) -> Result<Vec<RecordBatch>> {
    let config = ctx.state().config().clone();
    let stream = ballista_core::execution_plans::execute_physical_plan::<datafusion_proto::protobuf::PhysicalPlanNode>(
        scheduler.to_string(),
        &config.ballista_config(),
        plan,
        &LakeCodec::default(),
        ctx.session_id(),
        config,
    )
    .await?;
    Ok(datafusion::physical_plan::common::collect(stream).await?)
}

/// Ballista's function registry with marnflow's SQL functions added: what the executors decode
/// plans with.
fn function_registry() -> BallistaFunctionRegistry {
    let mut registry = BallistaFunctionRegistry::default();
    // Ballista's default registry leaves out DataFusion's nested functions (`string_to_array`,
    // `array_length`, …) that the feature SQL uses: without them an executor rejects the task.
    for f in datafusion::functions_nested::all_default_nested_functions() {
        for name in std::iter::once(f.name()).chain(f.aliases().iter().map(String::as_str)) {
            registry.scalar_functions.insert(name.to_string(), Arc::clone(&f));
        }
    }
    for f in crate::sql_functions::aggregate_functions() {
        registry.aggregate_functions.insert(f.name().to_string(), Arc::new(f));
    }
    for f in crate::sql_functions::scalar_functions() {
        registry.scalar_functions.insert(f.name().to_string(), Arc::new(f));
    }
    registry
}

/// The object stores of a cluster process: the local file system, and an `s3://` bucket's store
/// built from this process's environment the first time a plan names it, then kept.
#[derive(Debug, Default)]
pub struct LakeStores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for LakeStores {
    fn register_store(&self, url: &Url, store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> datafusion::common::Result<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        match (url.scheme(), url.host_str()) {
            ("s3" | "s3a", Some(bucket)) => {
                let lake = Lake::open(&format!("s3://{bucket}"))
                    .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
                let store = Arc::clone(lake.store());
                self.known.register_store(url, Arc::clone(&store));
                info!(bucket, "s3 store opened from this process's environment");
                Ok(store)
            }
            _ => self.known.get_store(url),
        }
    }
}

/// A runtime whose object stores are `stores`, spilling into `temp` when given.
fn runtime(stores: &Arc<LakeStores>, temp: Option<&str>) -> datafusion::common::Result<Arc<RuntimeEnv>> {
    let registry: Arc<dyn ObjectStoreRegistry> = Arc::clone(stores) as Arc<dyn ObjectStoreRegistry>;
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(registry);
    if let Some(dir) = temp {
        builder = builder.with_temp_file_path(dir);
    }
    Ok(Arc::new(builder.build()?))
}

/// The scheduler's sessions: Ballista's, with marnflow's SQL functions and the lake's stores.
fn session_builder(stores: Arc<LakeStores>) -> impl Fn(SessionConfig) -> datafusion::common::Result<SessionState> {
    move |config| {
        let state = ballista_core::utils::default_session_builder(config)?;
        let mut state = SessionStateBuilder::new_from_existing(state).with_runtime_env(runtime(&stores, None)?).build();
        for f in crate::sql_functions::aggregate_functions() {
            state.register_udaf(Arc::new(f))?;
        }
        for f in crate::sql_functions::scalar_functions() {
            state.register_udf(Arc::new(f))?;
        }
        Ok(state)
    }
}

/// Runs a Ballista scheduler on `bind` until the process is stopped.
pub async fn scheduler(bind: SocketAddr, executor_timeout: std::time::Duration) -> Result<()> {
    let stores = Arc::new(LakeStores::default());
    let timeout = executor_timeout.as_secs().max(2);
    let mut config = SchedulerConfig::default()
        .with_hostname(bind.ip().to_string())
        .with_port(bind.port())
        .with_override_session_builder(Arc::new(session_builder(stores)));
    config.override_physical_codec = Some(Arc::new(LakeCodec::default()));
    // A lost executor's tasks run again elsewhere once it has been silent this long; with none
    // left, running jobs fail after the same time (they do not wait forever).
    config.executor_timeout_seconds = timeout;
    config.expire_dead_executor_interval_seconds = (timeout / 3).clamp(1, 15);
    config.no_executors_grace_period_seconds = timeout;
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(ballista_error)?;
    info!(%bind, "ballista scheduler starts");
    start_server(cluster, bind, Arc::new(config)).await.map_err(ballista_error)
}

/// Where an executor listens and whom it serves.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's host and port.
    pub scheduler: (String, u16),
    /// The address it listens on: `port` serves the shuffle data (Arrow Flight), `port + 1` the
    /// scheduler's calls (gRPC).
    pub bind: SocketAddr,
    /// The host the others reach it at (default: the bind address).
    pub external_host: Option<String>,
    /// Tasks it runs at once (default: its cores).
    pub concurrent_tasks: Option<usize>,
    /// Its scratch folder for shuffle files.
    pub work_dir: std::path::PathBuf,
    /// How often it tells the scheduler it is alive.
    pub heartbeat: std::time::Duration,
}

/// Runs a Ballista executor until the process is stopped (SIGINT or SIGTERM).
pub async fn executor(opts: ExecutorOptions) -> Result<()> {
    std::fs::create_dir_all(&opts.work_dir)
        .map_err(|source| PipelineError::Io { path: opts.work_dir.display().to_string(), source })?;
    let grpc_port = opts.bind.port().checked_add(1).ok_or_else(|| {
        PipelineError::Config(vec![format!("executor port {}: the next port must be free for gRPC", opts.bind.port())])
    })?;
    let stores = Arc::new(LakeStores::default());
    let work_dir = opts.work_dir.to_string_lossy().into_owned();
    let temp = work_dir.clone();
    let config = ExecutorProcessConfig {
        bind_host: opts.bind.ip().to_string(),
        external_host: opts.external_host.clone(),
        port: opts.bind.port(),
        grpc_port,
        scheduler_host: opts.scheduler.0.clone(),
        scheduler_port: opts.scheduler.1,
        vcores: opts.concurrent_tasks.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        work_dir: Some(work_dir),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: opts.heartbeat.as_secs().max(1),
        override_function_registry: Some(Arc::new(function_registry())),
        override_runtime_producer: Some(Arc::new(move |_: &SessionConfig| runtime(&stores, Some(&temp)))),
        override_physical_codec: Some(Arc::new(LakeCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    info!(bind = %opts.bind, scheduler = %format!("{}:{}", opts.scheduler.0, opts.scheduler.1), "ballista executor starts");
    start_executor_process(Arc::new(config)).await.map_err(ballista_error)
}

fn ballista_error(e: ballista_core::error::BallistaError) -> PipelineError {
    PipelineError::Sql(datafusion::error::DataFusionError::External(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_and_print_back() {
        assert_eq!("embedded".parse::<Engine>(), Ok(Engine::Embedded));
        let e: Engine = "ballista://10.0.0.5:50050".parse().unwrap();
        assert_eq!(e, Engine::Ballista { host: "10.0.0.5".into(), port: 50050 });
        assert_eq!(e.to_string(), "ballista://10.0.0.5:50050");
        for bad in
            ["ballista://", "ballista://host", "ballista://:50050", "spark://h:1", "ballista://h:0", "ballista://h:x"]
        {
            let err = bad.parse::<Engine>().unwrap_err();
            assert!(err.contains("ballista://HOST:PORT"), "{bad}: {err}");
        }
    }
}
