//! One agent run, the two-call workflow shared by both suites: `analysis` with the data set,
//! then `report` on the analysis text. Also the single suite itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{ChatRequest, Client};
use crate::errors::{Class, RequestError};
use crate::job::{AgentConfig, AgentName, Job, Phase, Retries, Stage};
use crate::record::{
    now_rfc3339, request_record, single_metrics, CallContext, CallTiming, ClientInfo, RequestRecord, RunMetrics,
    RunRecord, WorkloadInfo, SCHEMA_VERSION,
};
use crate::workload::{nonce_attempt, prompt_nonce, Workload};

/// What every call of a run shares.
#[derive(Clone)]
pub struct RunContext {
    pub client: Client,
    pub workload: Arc<Workload>,
    /// The run's time origin (start_offset_ms = t_send − run_start).
    pub run_start: Instant,
    pub timeout: Duration,
    pub cold_load_ms: f64,
    /// The job's run_key and attempt, which seed each call's prompt nonce.
    pub run_key: String,
    pub attempt: u32,
    pub retries: Retries,
}

impl RunContext {
    pub fn new(client: Client, workload: Arc<Workload>, job: &Job) -> RunContext {
        RunContext {
            client,
            workload,
            run_start: Instant::now(),
            timeout: Duration::from_secs_f64(job.timeout_s),
            cold_load_ms: job.cold_load_ms,
            run_key: job.run_key.clone(),
            attempt: job.attempt,
            retries: job.retries,
        }
    }
}

/// The calls of one agent in one phase and when the phase released it / it finished.
#[derive(Debug, Clone)]
pub struct AgentRun {
    pub agent: AgentName,
    pub calls: Vec<RequestRecord>,
    pub t_release: Instant,
    pub t_done: Instant,
}

/// Run the agent's two calls back to back. `t_release` is when the phase released the agent.
pub async fn run_agent(
    ctx: &RunContext,
    name: AgentName,
    cfg: &AgentConfig,
    phase: Phase,
    t_release: Instant,
) -> Result<AgentRun, RequestError> {
    let mut calls = Vec::with_capacity(2);
    let (system, user) = ctx.workload.analysis(name).map_err(prompt_error)?;
    let (analysis, _) = call(ctx, name, cfg, phase, Stage::Analysis, &system, &user).await?;
    let (system, user) = ctx.workload.report(name, &analysis.output_text).map_err(prompt_error)?;
    calls.push(analysis);
    let (report, t_done) = call(ctx, name, cfg, phase, Stage::Report, &system, &user).await?;
    calls.push(report);
    // the agent is done when its last stream has ended
    Ok(AgentRun { agent: name, calls, t_release, t_done })
}

fn prompt_error(e: anyhow::Error) -> RequestError {
    // The job was checked against the workload before the run, so this is unreachable in
    // practice; keep it a request failure rather than a panic.
    RequestError::new(crate::errors::ErrorKind::Http, format!("{e:#}"))
}

/// One call, retried on the transient kinds with backoff, each attempt with its own nonce (as
/// bench/clients/agents.py does); only the successful attempt is recorded.
async fn call(
    ctx: &RunContext,
    agent: AgentName,
    cfg: &AgentConfig,
    phase: Phase,
    stage: Stage,
    system: &str,
    user: &str,
) -> Result<(RequestRecord, Instant), RequestError> {
    let mut attempt = 1;
    let (nonce, out) = loop {
        let nonce =
            prompt_nonce(&ctx.run_key, agent, stage, phase, nonce_attempt(ctx.attempt, attempt, ctx.retries.attempts));
        let req = ChatRequest {
            endpoint: &cfg.endpoint,
            api: cfg.api,
            model: &cfg.model,
            options: &cfg.options,
            nonce: Some(&nonce),
            system,
            user,
        };
        match ctx.client.chat(&req, ctx.timeout).await {
            Ok(out) => break (nonce, out),
            Err(e) if attempt < ctx.retries.attempts && ctx.client.classifier().class(e.kind) == Class::Transient => {
                tokio::time::sleep(ctx.retries.wait_after(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let timing = CallTiming::from_instants(ctx.run_start, out.t_send, &out.content_times, out.t_done);
    let cctx = CallContext {
        agent,
        stage,
        phase,
        endpoint: cfg.endpoint.clone(),
        api: cfg.api,
        model: cfg.model.clone(),
        prompt_nonce: nonce,
        call_attempt: attempt,
    };
    let record = request_record(&cctx, &timing, &out.stats, out.text, ctx.cold_load_ms);
    Ok((record, out.t_done))
}

/// Common header of metrics.json.
pub fn base_record(
    job: &Job,
    workload: &Workload,
    started_at: String,
    requests: Vec<RequestRecord>,
    metrics: RunMetrics,
    phase_order: Option<Vec<Phase>>,
) -> RunRecord {
    let mut requests: Vec<_> = requests.into_iter().collect();
    requests.sort_by(|a, b| a.start_offset_ms.total_cmp(&b.start_offset_ms));
    let cold_load = requests.iter().any(|r| r.cold_load);
    RunRecord {
        schema_version: SCHEMA_VERSION,
        study: job.study.clone(),
        suite: job.suite,
        lang: "rust",
        client: ClientInfo::default(),
        model: job.model.clone(),
        config: job.config.clone(),
        run_index: job.run_index,
        started_at,
        finished_at: now_rfc3339(),
        workload: WorkloadInfo {
            prompts_sha256: workload.prompts_sha256.clone(),
            dataset_sha256: workload.dataset_sha256.clone(),
            phase_order,
        },
        requests,
        metrics,
        cold_load,
    }
}

/// The single suite: one agent run, analysis then report.
pub async fn run_single(job: &Job, client: Client, workload: Arc<Workload>) -> Result<RunRecord, RequestError> {
    let cfg = job.agent(AgentName::Single);
    let started_at = now_rfc3339();
    let ctx = RunContext::new(client, workload.clone(), job);
    let run = run_agent(&ctx, AgentName::Single, cfg, Phase::Single, ctx.run_start).await?;
    let metrics = RunMetrics::Single(single_metrics(&run.calls));
    Ok(base_record(job, &workload, started_at, run.calls, metrics, None))
}
