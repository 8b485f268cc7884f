//! The multi suite: the collector and insight agents on their own servers, measured one at a
//! time (alone) and released together through a barrier (together), in the job's phase order.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;

use crate::agent::{base_record, run_agent, AgentRun, RunContext};
use crate::client::Client;
use crate::errors::{ErrorKind, RequestError};
use crate::job::{AgentName, Contention, Job, Phase};
use crate::metrics::{self, finite};
use crate::record::{
    single_metrics, AgentMultiMetrics, MultiAgents, MultiMetrics, RequestRecord, RunMetrics, RunRecord,
};
use crate::workload::Workload;

/// The timing of one agent in both phases.
#[derive(Debug, Clone)]
pub struct AgentPhases {
    pub alone: AgentRun,
    pub together: AgentRun,
}

fn ns(from: Instant, to: Instant) -> i64 {
    to.saturating_duration_since(from).as_nanos() as i64
}

/// Per-agent metrics from its alone and together runs.
pub fn agent_metrics(p: &AgentPhases) -> AgentMultiMetrics {
    let alone = single_metrics(&p.alone.calls);
    let together = single_metrics(&p.together.calls);
    AgentMultiMetrics {
        t_alone_s: metrics::agent_time_s(0, ns(p.alone.t_release, p.alone.t_done)),
        t_together_s: metrics::agent_time_s(0, ns(p.together.t_release, p.together.t_done)),
        decode_tps_alone: alone.decode_tps,
        decode_tps_together: together.decode_tps,
        ttft_ms_alone: alone.ttft_ms,
        ttft_ms_together: together.ttft_ms,
        tps_ratio: finite(metrics::tps_ratio(together.decode_tps, alone.decode_tps)),
        ttft_inflation: finite(metrics::ttft_inflation(together.ttft_ms, alone.ttft_ms)),
    }
}

/// The multi metrics from both agents' phases. The together phase's release is the earlier of
/// the two post-barrier starts; both agents' together times count from it.
pub fn multi_metrics(collector: &AgentPhases, insight: &AgentPhases, contention: Contention) -> MultiMetrics {
    let release = collector.together.t_release.min(insight.together.t_release);
    let all_done = collector.together.t_done.max(insight.together.t_done);
    let mut c = agent_metrics(collector);
    let mut i = agent_metrics(insight);
    c.t_together_s = metrics::agent_time_s(0, ns(release, collector.together.t_done));
    i.t_together_s = metrics::agent_time_s(0, ns(release, insight.together.t_done));
    let wall = metrics::wall_s(0, ns(release, all_done));
    let seq = metrics::seq_s(c.t_alone_s, i.t_alone_s);
    let speedup = metrics::speedup(seq, wall);
    MultiMetrics {
        wall_s: wall,
        seq_s: seq,
        speedup,
        efficiency_pct: metrics::efficiency_pct(speedup, 2),
        evenness_pct: metrics::evenness_pct(c.t_together_s, i.t_together_s),
        contention: metrics::contention(
            &[c.tps_ratio, i.tps_ratio],
            &[c.ttft_inflation, i.ttft_inflation],
            contention.min_tps_ratio,
            contention.max_ttft_inflation,
        ),
        legacy_contention: metrics::legacy_contention(speedup),
        agents: MultiAgents { collector: c, insight: i },
    }
}

/// Alone phase: each agent in `order`, released when the previous one is done.
async fn alone_phase(ctx: &RunContext, job: &Job, order: &[AgentName]) -> Result<Vec<AgentRun>, RequestError> {
    let mut runs = Vec::with_capacity(order.len());
    for &name in order {
        let cfg = job.agent(name);
        let t_release = Instant::now();
        runs.push(run_agent(ctx, name, cfg, Phase::Alone, t_release).await?);
    }
    Ok(runs)
}

/// Together phase: one task per agent; both wait on a barrier and note their own start after it.
async fn together_phase(ctx: &RunContext, job: &Job) -> Result<Vec<AgentRun>, RequestError> {
    let barrier = Arc::new(Barrier::new(2));
    let mut handles = Vec::with_capacity(2);
    for name in [AgentName::Collector, AgentName::Insight] {
        let cfg = job.agent(name).clone();
        let ctx = ctx.clone();
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let start = Instant::now();
            run_agent(&ctx, name, &cfg, Phase::Together, start).await
        }));
    }
    let joined = |r: Result<Result<AgentRun, RequestError>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(RequestError::new(ErrorKind::Http, format!("agent task failed: {e}"))),
    };
    let second = handles.pop().expect("two tasks");
    let first = handles.pop().expect("two tasks");
    let (abort_first, abort_second) = (first.abort_handle(), second.abort_handle());
    // The first failure ends the phase; the other agent's call is cancelled.
    let result = tokio::try_join!(async { joined(first.await) }, async { joined(second.await) });
    match result {
        Ok((a, b)) => Ok(vec![a, b]),
        Err(e) => {
            abort_first.abort();
            abort_second.abort();
            Err(e)
        }
    }
}

/// The whole multi run.
pub async fn run_multi(job: &Job, client: Client, workload: Arc<Workload>) -> Result<RunRecord, RequestError> {
    let started_at = crate::record::now_rfc3339();
    let ctx = RunContext::new(client, workload.clone(), job);
    let phase_order = job.phase_order();
    let mut alone = Vec::new();
    let mut together = Vec::new();
    for phase in &phase_order {
        match phase {
            Phase::Alone => alone = alone_phase(&ctx, job, &job.alone_order()).await?,
            Phase::Together => together = together_phase(&ctx, job).await?,
            Phase::Single => unreachable!("checked by Job::parse"),
        }
    }
    let take = |runs: &mut Vec<AgentRun>, name: AgentName| {
        let i = runs.iter().position(|r| r.agent == name).expect("each agent ran in each phase");
        runs.swap_remove(i)
    };
    let collector = AgentPhases {
        alone: take(&mut alone, AgentName::Collector),
        together: take(&mut together, AgentName::Collector),
    };
    let insight =
        AgentPhases { alone: take(&mut alone, AgentName::Insight), together: take(&mut together, AgentName::Insight) };
    let metrics = RunMetrics::Multi(Box::new(multi_metrics(&collector, &insight, job.contention)));
    let requests: Vec<RequestRecord> =
        [collector, insight].into_iter().flat_map(|p| p.alone.calls.into_iter().chain(p.together.calls)).collect();
    Ok(base_record(job, &workload, started_at, requests, metrics, Some(phase_order)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Api, Stage};
    use crate::record::{request_record, CallContext, CallTiming};
    use crate::stream::ServerStats;
    use std::time::Duration;

    fn call(agent: AgentName, phase: Phase, n: u64, eval_ms: f64, ttft_ms: i64) -> RequestRecord {
        let ctx = CallContext {
            agent,
            stage: Stage::Analysis,
            phase,
            endpoint: "http://x".into(),
            api: Api::Ollama,
            model: "m".into(),
            prompt_nonce: "0123456789abcdef".into(),
            call_attempt: 1,
        };
        let timing = CallTiming {
            t_send_ns: 0,
            content_ns: vec![ttft_ms * 1_000_000, ttft_ms * 1_000_000 + 500_000_000],
            t_done_ns: 2_000_000_000,
        };
        let stats = ServerStats { output_tokens: Some(n), eval_ms: Some(eval_ms), ..Default::default() };
        request_record(&ctx, &timing, &stats, String::new(), 1e9)
    }

    fn run(
        agent: AgentName,
        phase: Phase,
        base: Instant,
        start_ms: u64,
        done_ms: u64,
        tps: f64,
        ttft: i64,
    ) -> AgentRun {
        AgentRun {
            agent,
            calls: vec![call(agent, phase, 100, 100.0 / tps * 1000.0, ttft)],
            t_release: base + Duration::from_millis(start_ms),
            t_done: base + Duration::from_millis(done_ms),
        }
    }

    #[test]
    fn multi_metrics_from_phases() {
        let b = Instant::now();
        let collector = AgentPhases {
            alone: run(AgentName::Collector, Phase::Alone, b, 0, 10_000, 100.0, 100),
            together: run(AgentName::Collector, Phase::Together, b, 30_001, 41_000, 80.0, 300),
        };
        let insight = AgentPhases {
            alone: run(AgentName::Insight, Phase::Alone, b, 10_000, 22_000, 50.0, 200),
            together: run(AgentName::Insight, Phase::Together, b, 30_000, 43_000, 50.0, 200),
        };
        let m = multi_metrics(&collector, &insight, Contention::default());
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(m.agents.collector.t_alone_s, 10.0));
        assert!(close(m.agents.insight.t_alone_s, 12.0));
        // release = the earlier start (insight's, at 30 s)
        assert!(close(m.agents.collector.t_together_s, 11.0));
        assert!(close(m.agents.insight.t_together_s, 13.0));
        assert!(close(m.wall_s, 13.0));
        assert!(close(m.seq_s, 22.0));
        assert!(close(m.speedup, 22.0 / 13.0));
        assert!(close(m.efficiency_pct, 22.0 / 13.0 * 50.0));
        assert!(close(m.evenness_pct, 24.0 / 26.0 * 100.0));
        assert!(close(m.agents.collector.tps_ratio.unwrap(), 0.8));
        assert!(close(m.agents.collector.ttft_inflation.unwrap(), 3.0));
        assert!(close(m.agents.insight.tps_ratio.unwrap(), 1.0));
        assert!(m.contention, "collector: ratio 0.8 < 0.85 and inflation 3 > 2");
        assert!(!m.legacy_contention);
        let relaxed = Contention { min_tps_ratio: 0.5, max_ttft_inflation: 4.0 };
        assert!(!multi_metrics(&collector, &insight, relaxed).contention);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["agents"]["collector"].as_object().unwrap().len(), 8);
        assert_eq!(v.as_object().unwrap().len(), 8);
    }
}
