//! The metrics.json document (`bench/data/metrics.schema.json`, schema_version 1) and the
//! per-request record built from a call's timing.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::job::{AgentName, Api, ModelInfo, Phase, Stage, Suite};
use crate::metrics::{self, finite, GapStats};
use crate::stream::ServerStats;

pub const SCHEMA_VERSION: u32 = 1;
pub const CLIENT_NAME: &str = "tr116-agent (reqwest)";

#[derive(Debug, Clone, Serialize)]
pub struct ClientInfo {
    pub name: &'static str,
    pub version: &'static str,
}

impl Default for ClientInfo {
    fn default() -> Self {
        ClientInfo { name: CLIENT_NAME, version: env!("CARGO_PKG_VERSION") }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadInfo {
    pub prompts_sha256: String,
    pub dataset_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase_order: Option<Vec<Phase>>,
}

/// One streamed call (`$defs/request`): its context's fields first, then what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    #[serde(flatten)]
    pub ctx: CallContext,
    pub start_offset_ms: f64,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    pub itl_ms: Option<GapStats>,
    pub content_chunks: u64,
    pub output_tokens: u64,
    pub output_tokens_estimated: bool,
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens the engine reused from its cache (llama.cpp timings.cache_n); null for Ollama.
    pub prompt_cached_tokens: Option<u64>,
    pub decode_tps_client: Option<f64>,
    pub decode_tps_server: Option<f64>,
    pub load_ms: Option<f64>,
    pub prompt_eval_ms: Option<f64>,
    pub eval_ms: Option<f64>,
    pub cold_load: bool,
    pub done_reason: Option<String>,
    // No `error`/`error_kind`: a record is made only for a call that succeeded (the schema keeps
    // them, always null, for records stored before).
    pub output_text: String,
    /// The call's raw clock (schema `timing`): every client timing metric above is a function of it.
    pub timing: CallTiming,
}

/// Where a call sits in the run: the record's first fields, in the schema's order.
#[derive(Debug, Clone, Serialize)]
pub struct CallContext {
    pub agent: AgentName,
    pub stage: Stage,
    pub phase: Phase,
    pub endpoint: String,
    pub api: Api,
    pub model: String,
    /// The 16 hex digits on the system message's first line (`workload::prompt_nonce`).
    pub prompt_nonce: String,
    /// Which try of this call made the record (1: first; more: earlier tries failed transiently).
    pub call_attempt: u32,
}

/// The timing of a finished call, in nanoseconds from the run start: the send, each content
/// message's arrival (one stamp per parsed message that carried text), the end of the stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallTiming {
    pub t_send_ns: i64,
    pub content_ns: Vec<i64>,
    pub t_done_ns: i64,
}

impl CallTiming {
    pub fn from_instants(run_start: Instant, t_send: Instant, content: &[Instant], t_done: Instant) -> CallTiming {
        let ns = |t: Instant| t.saturating_duration_since(run_start).as_nanos() as i64;
        CallTiming {
            t_send_ns: ns(t_send),
            content_ns: content.iter().map(|&t| ns(t)).collect(),
            t_done_ns: ns(t_done),
        }
    }

    /// Seconds from the first to the last content chunk (None with no content).
    pub fn decode_span_s(&self) -> Option<f64> {
        match (self.content_ns.first(), self.content_ns.last()) {
            (Some(a), Some(b)) => Some((b - a) as f64 / metrics::NS_PER_S),
            _ => None,
        }
    }
}

/// Build a request record from a finished call (metrics.py request-level formulas).
pub fn request_record(
    ctx: &CallContext,
    timing: &CallTiming,
    stats: &ServerStats,
    text: String,
    cold_load_ms: f64,
) -> RequestRecord {
    let content_chunks = timing.content_ns.len() as u64;
    let (output_tokens, estimated) = match stats.output_tokens {
        Some(n) => (n, false),
        None => (content_chunks, true),
    };
    let first = timing.content_ns.first().copied();
    let last = timing.content_ns.last().copied();
    let gaps = metrics::inter_token_gaps_ms(&timing.content_ns);
    RequestRecord {
        ctx: ctx.clone(),
        start_offset_ms: timing.t_send_ns as f64 / metrics::NS_PER_MS,
        ttft_ms: finite(metrics::ttft_ms(timing.t_send_ns, first)),
        e2e_ms: metrics::e2e_ms(timing.t_send_ns, timing.t_done_ns),
        itl_ms: metrics::gap_stats(&gaps),
        content_chunks,
        output_tokens,
        output_tokens_estimated: estimated,
        prompt_tokens: stats.prompt_tokens,
        prompt_cached_tokens: stats.prompt_cached_tokens,
        decode_tps_client: finite(metrics::decode_tps_client(output_tokens, first, last)),
        decode_tps_server: finite(metrics::decode_tps_server(Some(output_tokens), stats.eval_ms)),
        load_ms: finite(stats.load_ms),
        prompt_eval_ms: finite(stats.prompt_eval_ms),
        eval_ms: finite(stats.eval_ms),
        cold_load: metrics::is_cold_load(stats.load_ms, cold_load_ms),
        done_reason: stats.done_reason.clone(),
        output_text: text,
        timing: timing.clone(),
    }
}

/// The run-level numbers of the single suite (`$defs/single_metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct SingleMetrics {
    pub decode_tps: Option<f64>,
    pub decode_tps_client: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub latency_ms: f64,
    pub output_tokens: u64,
}

pub fn single_metrics(calls: &[RequestRecord]) -> SingleMetrics {
    let eval: Vec<(u64, Option<f64>)> = calls.iter().map(|c| (c.output_tokens, c.eval_ms)).collect();
    let spans: Vec<(u64, Option<f64>)> = calls.iter().map(|c| (c.output_tokens, c.timing.decode_span_s())).collect();
    let ttfts: Vec<Option<f64>> = calls.iter().map(|c| c.ttft_ms).collect();
    let e2es: Vec<f64> = calls.iter().map(|c| c.e2e_ms).collect();
    SingleMetrics {
        decode_tps: finite(metrics::run_decode_tps(&eval)),
        decode_tps_client: finite(metrics::run_decode_tps_client(&spans)),
        ttft_ms: finite(metrics::run_ttft_ms(&ttfts)),
        latency_ms: metrics::run_latency_ms(&e2es),
        output_tokens: calls.iter().map(|c| c.output_tokens).sum(),
    }
}

/// Per agent numbers of the multi suite (`$defs/agent_multi_metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct AgentMultiMetrics {
    pub t_alone_s: f64,
    pub t_together_s: f64,
    pub decode_tps_alone: Option<f64>,
    pub decode_tps_together: Option<f64>,
    pub ttft_ms_alone: Option<f64>,
    pub ttft_ms_together: Option<f64>,
    pub tps_ratio: Option<f64>,
    pub ttft_inflation: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MultiAgents {
    pub collector: AgentMultiMetrics,
    pub insight: AgentMultiMetrics,
}

/// The run-level numbers of the multi suite (`$defs/multi_metrics`).
#[derive(Debug, Clone, Serialize)]
pub struct MultiMetrics {
    pub wall_s: f64,
    pub seq_s: f64,
    pub speedup: f64,
    pub efficiency_pct: f64,
    pub evenness_pct: f64,
    pub contention: bool,
    pub legacy_contention: bool,
    pub agents: MultiAgents,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RunMetrics {
    Single(SingleMetrics),
    Multi(Box<MultiMetrics>),
}

/// metrics.json.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub schema_version: u32,
    pub study: String,
    pub suite: Suite,
    pub lang: &'static str,
    pub client: ClientInfo,
    pub model: ModelInfo,
    pub config: serde_json::Value,
    pub run_index: u32,
    pub started_at: String,
    pub finished_at: String,
    pub workload: WorkloadInfo,
    pub requests: Vec<RequestRecord>,
    pub metrics: RunMetrics,
    pub cold_load: bool,
}

/// RFC 3339 UTC timestamp with microseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Write JSON atomically: `PATH.tmp`, flushed to disk, then renamed onto `PATH`.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut bytes = serde_json::to_vec_pretty(value).context("cannot serialise metrics.json")?;
    bytes.push(b'\n');
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        CallContext {
            agent: AgentName::Single,
            stage: Stage::Analysis,
            phase: Phase::Single,
            endpoint: "http://127.0.0.1:1".into(),
            api: Api::Ollama,
            model: "m".into(),
            prompt_nonce: "fc8ae2c437e2a020".into(),
            call_attempt: 1,
        }
    }

    #[test]
    fn record_from_scripted_timing() {
        // run start 0; sent at 5 ms; content at 105, 115, 135 ms; done at 140 ms.
        let timing = CallTiming {
            t_send_ns: 5_000_000,
            content_ns: vec![105_000_000, 115_000_000, 135_000_000],
            t_done_ns: 140_000_000,
        };
        let stats = ServerStats {
            done_reason: Some("length".into()),
            output_tokens: Some(3),
            prompt_tokens: Some(10),
            eval_ms: Some(25.0),
            prompt_eval_ms: Some(90.0),
            load_ms: Some(1500.0),
            prompt_cached_tokens: None,
        };
        let r = request_record(&ctx(), &timing, &stats, "abc".into(), 1000.0);
        assert_eq!(r.start_offset_ms, 5.0);
        assert_eq!(r.ttft_ms, Some(100.0));
        assert_eq!(r.e2e_ms, 135.0);
        let itl = r.itl_ms.clone().unwrap();
        assert_eq!(itl.n, 2);
        assert_eq!(itl.mean, 15.0);
        assert_eq!(itl.max, 20.0);
        // ttft + Σ gaps = offset of the last chunk from t_send ≤ e2e
        assert_eq!(r.ttft_ms.unwrap() + itl.mean * itl.n as f64, 130.0);
        assert!(130.0 <= r.e2e_ms);
        assert_eq!(r.content_chunks, 3);
        assert_eq!(r.output_tokens, 3);
        assert!(!r.output_tokens_estimated);
        assert_eq!(r.decode_tps_client, Some(2.0 / 0.030));
        assert_eq!(r.decode_tps_server, Some(120.0));
        assert!(r.cold_load, "load_ms 1500 ≥ 1000");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["agent"], "single");
        assert_eq!(v["stage"], "analysis");
        assert_eq!(v["api"], "ollama");
        assert!(v.get("error").is_none() && v.get("error_kind").is_none(), "a record is of a call that succeeded");
        assert!(v["prompt_cached_tokens"].is_null(), "Ollama reports no cached prompt tokens: null, not absent");
        assert_eq!(v.as_object().unwrap().len(), 26); // the schema's request fields, less error and error_kind
                                                      // the raw clock is stored, in ns from the run start, as the schema's `timing`
        assert_eq!(
            v["timing"],
            serde_json::json!({"t_send_ns": 5_000_000, "content_ns": [105_000_000, 115_000_000, 135_000_000],
                               "t_done_ns": 140_000_000})
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.contains(r#""model":"m","prompt_nonce":"fc8ae2c437e2a020","call_attempt":1,"start_offset_ms""#),
            "{text}"
        );
    }

    #[test]
    fn estimated_tokens_and_no_content() {
        let timing = CallTiming { t_send_ns: 0, content_ns: vec![10], t_done_ns: 20 };
        let r = request_record(&ctx(), &timing, &ServerStats::default(), "x".into(), 0.0);
        assert_eq!(r.output_tokens, 1);
        assert!(r.output_tokens_estimated);
        assert_eq!(r.itl_ms, None);
        assert_eq!(r.decode_tps_client, None);
        assert_eq!(r.decode_tps_server, None);
        assert!(!r.cold_load, "no load time (llama.cpp): never cold, whatever the threshold");
        let timing = CallTiming { t_send_ns: 0, content_ns: vec![], t_done_ns: 20 };
        let r = request_record(&ctx(), &timing, &ServerStats::default(), String::new(), 1000.0);
        assert_eq!(r.ttft_ms, None);
        assert_eq!(r.output_tokens, 0);
        assert!(!r.cold_load);
    }

    #[test]
    fn single_run_metrics() {
        let mk = |content: Vec<i64>, n: u64, eval: Option<f64>| {
            let timing = CallTiming { t_send_ns: 0, content_ns: content, t_done_ns: 2_000_000_000 };
            let stats = ServerStats { output_tokens: Some(n), eval_ms: eval, ..Default::default() };
            request_record(&ctx(), &timing, &stats, String::new(), 1e9)
        };
        let calls = vec![
            mk(vec![100_000_000, 600_000_000], 11, Some(500.0)),
            mk(vec![200_000_000, 1_200_000_000], 21, Some(1500.0)),
        ];
        let m = single_metrics(&calls);
        assert_eq!(m.decode_tps, Some(32.0 / 2.0));
        assert_eq!(m.decode_tps_client, Some(30.0 / 1.5));
        assert_eq!(m.ttft_ms, Some(150.0));
        assert_eq!(m.latency_ms, 4000.0);
        assert_eq!(m.output_tokens, 32);
    }

    #[test]
    fn atomic_write() {
        let dir = std::env::temp_dir().join(format!("tr116-rec-{}", std::process::id()));
        let path = dir.join("sub/metrics.json");
        write_json_atomic(&path, &serde_json::json!({"a": 1})).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back["a"], 1);
        assert!(!dir.join("sub/metrics.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(now_rfc3339().ends_with('Z'));
    }
}
