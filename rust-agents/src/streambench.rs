//! Client overhead benchmark: stream N requests back to back from a loopback server that emits
//! tokens as fast as it can, through the same client path as the agents, and report the
//! client's token throughput and CPU cost per token.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{ChatRequest, Client};
use crate::errors::RequestError;
use crate::job::{Api, Options};
use crate::metrics::{self, finite};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub url: String,
    pub api: Api,
    pub requests: u32,
    pub model: String,
    pub num_predict: i64,
    pub timeout: Duration,
}

/// The one JSON line `stream-bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub client: &'static str,
    pub api: Api,
    pub requests: u32,
    pub tokens: u64,
    pub wall_s: f64,
    pub tokens_per_s: Option<f64>,
    pub cpu_s: f64,
    pub cpu_us_per_token: Option<f64>,
    pub decode_tps_client_mean: Option<f64>,
    pub decode_tps_server_mean: Option<f64>,
}

/// User + system CPU time of this process (all threads), seconds.
pub fn process_cpu_s() -> f64 {
    // SAFETY: getrusage only writes the struct we pass; a zeroed rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Totals of a set of streamed requests → the result line.
pub fn summarise(
    api: Api,
    requests: u32,
    per_request: &[(u64, Option<f64>, Option<f64>)],
    wall_s: f64,
    cpu_s: f64,
) -> BenchResult {
    let tokens: u64 = per_request.iter().map(|r| r.0).sum();
    let rate = |num: f64, den: f64| finite((den > 0.0).then(|| num / den));
    BenchResult {
        client: "rust",
        api,
        requests,
        tokens,
        wall_s,
        tokens_per_s: rate(tokens as f64, wall_s),
        cpu_s,
        cpu_us_per_token: rate(cpu_s * 1e6, tokens as f64),
        decode_tps_client_mean: finite(metrics::fmean(per_request.iter().filter_map(|r| r.1))),
        decode_tps_server_mean: finite(metrics::fmean(per_request.iter().filter_map(|r| r.2))),
    }
}

pub async fn run_bench(client: &Client, cfg: &BenchConfig) -> Result<BenchResult, RequestError> {
    let options = Options {
        num_predict: cfg.num_predict,
        seed: 0,
        ignore_eos: Some(true),
        temperature: None,
        num_ctx: None,
        num_gpu: None,
        num_thread: None,
    };
    let req = ChatRequest {
        endpoint: &cfg.url,
        api: cfg.api,
        model: &cfg.model,
        options: &options,
        nonce: None,
        system: "You are a benchmark.",
        user: "Stream tokens.",
    };
    // One uncounted call first, as the Python bench does: it pays the first-use costs (runtime
    // and allocator warm-up, lazy initialisation) that a steady client does not.
    client.chat(&req, cfg.timeout).await?;
    let mut per_request = Vec::with_capacity(cfg.requests as usize);
    let cpu0 = process_cpu_s();
    let t0 = Instant::now();
    for _ in 0..cfg.requests {
        let out = client.chat(&req, cfg.timeout).await?;
        let n = out.stats.output_tokens.unwrap_or(out.content_times.len() as u64);
        let ns = |t: &Instant| t.saturating_duration_since(out.t_send).as_nanos() as i64;
        let client_tps =
            metrics::decode_tps_client(n, out.content_times.first().map(ns), out.content_times.last().map(ns));
        let server_tps = metrics::decode_tps_server(Some(n), out.stats.eval_ms);
        per_request.push((n, client_tps, server_tps));
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = process_cpu_s() - cpu0;
    Ok(summarise(cfg.api, cfg.requests, &per_request, wall_s, cpu_s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_arithmetic() {
        let r = summarise(
            Api::Openai,
            2,
            &[(1000, Some(100_000.0), Some(200_000.0)), (500, None, Some(100_000.0))],
            0.015,
            0.0075,
        );
        assert_eq!(r.tokens, 1500);
        assert!((r.tokens_per_s.unwrap() - 100_000.0).abs() < 1e-6);
        assert!((r.cpu_us_per_token.unwrap() - 5.0).abs() < 1e-9);
        assert_eq!(r.decode_tps_client_mean, Some(100_000.0));
        assert_eq!(r.decode_tps_server_mean, Some(150_000.0));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["client"], "rust");
        assert_eq!(v["api"], "openai");
        let empty = summarise(Api::Ollama, 0, &[], 0.0, 0.0);
        assert_eq!(empty.tokens_per_s, None);
        assert_eq!(empty.cpu_us_per_token, None);
        assert_eq!(empty.decode_tps_client_mean, None);
    }

    #[test]
    fn cpu_clock_advances() {
        let a = process_cpu_s();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = process_cpu_s();
        assert!(a.is_finite() && b >= a);
    }
}
