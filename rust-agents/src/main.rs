//! `tr116-agent`: run one benchmark job (single or multi suite) or the client stream benchmark.
//!
//! Exit status: 0 success (metrics.json written); 1 internal / output error; 2 bad job file or
//! usage; 3 a request failed. On failure the last stderr line is one JSON object,
//! `{"error_kind": ..., "class": ..., "message": ...}` (bench/data/agent_error.schema.json).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use tr116_agents::agent::run_single;
use tr116_agents::client::{api_key_from_env, Client};
use tr116_agents::errors::{Classifier, ErrorLine, RequestError};
use tr116_agents::job::{Api, Job, JobSchema, Suite, DEFAULT_SCHEMA_FILE};
use tr116_agents::multi::run_multi;
use tr116_agents::record::write_json_atomic;
use tr116_agents::streambench::{run_bench, BenchConfig};
use tr116_agents::workload::Workload;

const EXIT_INTERNAL: u8 = 1;
const EXIT_BAD_JOB: u8 = 2;
const EXIT_REQUEST_FAILED: u8 = 3;

#[derive(Parser)]
#[command(name = "tr116-agent", version, about = "TR116 benchmark agents (Rust, reqwest)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-suite job: one agent, analysis then report.
    Single(RunArgs),
    /// Run a multi-suite job: collector and insight, alone and together.
    Multi(RunArgs),
    /// Stream N requests from a (fast loopback) server and print one JSON line with the
    /// client's throughput and CPU cost. Runs on a single-threaded runtime (one core).
    StreamBench(BenchArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Job file written by the orchestrator.
    #[arg(long)]
    job: PathBuf,
    /// Where to write metrics.json (atomically, via PATH.tmp).
    #[arg(long)]
    out: PathBuf,
    /// The job's JSON Schema (bench/data/job.schema.json; default: beside the sources this binary
    /// was built from).
    #[arg(long, default_value = DEFAULT_SCHEMA_FILE)]
    job_schema: PathBuf,
}

#[derive(Args)]
struct BenchArgs {
    /// Server base URL (the chat path is appended unless already present).
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    api: Api,
    /// Number of requests, streamed one after another.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    requests: u32,
    #[arg(long, default_value = "bench")]
    model: String,
    /// num_predict / max_tokens sent with each request.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(i64).range(1..))]
    num_predict: i64,
    /// Per-request timeout, seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout_s: f64,
    /// error_kinds.yaml for classifying failures (optional).
    #[arg(long)]
    error_kinds: Option<PathBuf>,
}

/// A failure that is not a request's (exit 1 or 2): its error line, without a kind.
fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("{}", ErrorLine::other(msg).to_json());
    ExitCode::from(code)
}

/// A failed request (exit 3): its error line with the kind and its class.
fn fail_request(err: &RequestError, classifier: &Classifier) -> ExitCode {
    eprintln!("{}", ErrorLine::request(err, classifier).to_json());
    ExitCode::from(EXIT_REQUEST_FAILED)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Single(args) => run_job(Suite::Single, &args),
        Command::Multi(args) => run_job(Suite::Multi, &args),
        Command::StreamBench(args) => stream_bench(&args),
    }
}

/// Everything that makes a job runnable, checked before any request goes out (exit 2).
fn prepare(suite: Suite, job_path: &Path, schema_path: &Path) -> Result<(Job, Classifier, Workload), String> {
    let schema = JobSchema::load(schema_path)?;
    let job = Job::load(job_path, &schema).map_err(|e| e.to_string())?;
    if job.suite != suite {
        return Err(format!(
            "bad job file {}: key `suite` is {:?} but the `{suite}` command was run",
            job_path.display(),
            job.suite.to_string(),
        ));
    }
    let bad = |key: &str, e: anyhow::Error| format!("bad job file {}: key `{key}`: {e:#}", job_path.display());
    let classifier = Classifier::load(&job.error_kinds_file).map_err(|e| bad("error_kinds_file", e))?;
    let workload = Workload::load(&job.workload_file, &job.dataset_dir).map_err(|e| {
        let key = if format!("{e:#}").contains("dataset") { "dataset_dir" } else { "workload_file" };
        bad(key, e)
    })?;
    for name in job.agent_names() {
        workload.prompts(name).map_err(|e| bad("workload_file", e))?;
    }
    Ok((job, classifier, workload))
}

/// The HTTP client every call of the process shares (with the servers' key from the environment)
/// and the async runtime `runtime` builds; a failure is the agent's own (exit 1).
fn client_and_runtime(
    classifier: &Classifier,
    mut runtime: tokio::runtime::Builder,
) -> Result<(Client, tokio::runtime::Runtime), ExitCode> {
    let client = Client::new(classifier.clone())
        .map_err(|e| fail(EXIT_INTERNAL, format!("cannot build the HTTP client: {e:#}")))?
        .with_api_key(api_key_from_env());
    let runtime = runtime
        .enable_all()
        .build()
        .map_err(|e| fail(EXIT_INTERNAL, format!("cannot start the async runtime: {e}")))?;
    Ok((client, runtime))
}

fn run_job(suite: Suite, args: &RunArgs) -> ExitCode {
    let (job, classifier, workload) = match prepare(suite, &args.job, &args.job_schema) {
        Ok(p) => p,
        Err(msg) => return fail(EXIT_BAD_JOB, msg),
    };
    let (client, runtime) = match client_and_runtime(&classifier, tokio::runtime::Builder::new_multi_thread()) {
        Ok(built) => built,
        Err(code) => return code,
    };
    let workload = Arc::new(workload);
    let result = runtime.block_on(async {
        match suite {
            Suite::Single => run_single(&job, client, workload).await,
            Suite::Multi => run_multi(&job, client, workload).await,
        }
    });
    drop(runtime);
    match result {
        Ok(record) => match write_json_atomic(&args.out, &record) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_INTERNAL, format!("{e:#}")),
        },
        Err(e) => fail_request(&e, &classifier),
    }
}

fn stream_bench(args: &BenchArgs) -> ExitCode {
    let timeout = match Duration::try_from_secs_f64(args.timeout_s) {
        Ok(t) if !t.is_zero() => t,
        _ => return fail(EXIT_BAD_JOB, "--timeout-s must be a positive number of seconds"),
    };
    let classifier = match &args.error_kinds {
        Some(path) => match Classifier::load(path) {
            Ok(c) => c,
            Err(e) => return fail(EXIT_BAD_JOB, format!("--error-kinds: {e:#}")),
        },
        None => Classifier::default(),
    };
    // one thread: the client's CPU cost per streamed byte is what stream-bench measures
    let (client, runtime) = match client_and_runtime(&classifier, tokio::runtime::Builder::new_current_thread()) {
        Ok(built) => built,
        Err(code) => return code,
    };
    let cfg = BenchConfig {
        url: args.url.clone(),
        api: args.api,
        requests: args.requests,
        model: args.model.clone(),
        num_predict: args.num_predict,
        timeout,
    };
    let result = runtime.block_on(run_bench(&client, &cfg));
    match result {
        Ok(r) => match serde_json::to_string(&r) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_INTERNAL, e),
        },
        Err(e) => fail_request(&e, &classifier),
    }
}
