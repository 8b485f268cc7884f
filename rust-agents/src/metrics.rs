//! The metric formulas of `bench/core/metrics.py`, one function each, same names and null rules.
//!
//! Timestamps are integer nanoseconds on a monotonic clock (`Instant`), measured from any fixed
//! origin (the client uses the request's `t_send`). `None` plays Python's `None`; callers turn
//! non-finite values into JSON null with [`finite`].

pub const NS_PER_MS: f64 = 1_000_000.0;
pub const NS_PER_S: f64 = 1_000_000_000.0;

/// JSON has no NaN/inf: map them to null (`finite_or_none`).
pub fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

// ------------------------------------------------------------------------------------------
// Request level
// ------------------------------------------------------------------------------------------

/// ttft_ms = (t_first_content − t_send) / 10⁶
pub fn ttft_ms(t_send_ns: i64, t_first_content_ns: Option<i64>) -> Option<f64> {
    t_first_content_ns.map(|t| (t - t_send_ns) as f64 / NS_PER_MS)
}

/// e2e_ms = (t_done − t_send) / 10⁶
pub fn e2e_ms(t_send_ns: i64, t_done_ns: i64) -> f64 {
    (t_done_ns - t_send_ns) as f64 / NS_PER_MS
}

/// gapᵢ = (t_contentᵢ − t_contentᵢ₋₁) / 10⁶, for i = 2..n
pub fn inter_token_gaps_ms(content_times_ns: &[i64]) -> Vec<f64> {
    content_times_ns.windows(2).map(|w| (w[1] - w[0]) as f64 / NS_PER_MS).collect()
}

/// decode_tps_client = (N_out − 1) / ((t_last_content − t_first_content) / 10⁹)
pub fn decode_tps_client(
    output_tokens: u64,
    t_first_content_ns: Option<i64>,
    t_last_content_ns: Option<i64>,
) -> Option<f64> {
    let (first, last) = (t_first_content_ns?, t_last_content_ns?);
    if output_tokens < 2 {
        return None;
    }
    let span_ns = last - first;
    if span_ns <= 0 {
        return None;
    }
    Some((output_tokens - 1) as f64 / (span_ns as f64 / NS_PER_S))
}

/// decode_tps_server = N_eval / (eval_ms / 10³)
pub fn decode_tps_server(output_tokens: Option<u64>, eval_ms: Option<f64>) -> Option<f64> {
    let n = output_tokens.filter(|&n| n > 0)?;
    let e = eval_ms.filter(|&e| e > 0.0)?;
    Some(n as f64 / (e / 1000.0))
}

/// load_ms, prompt_eval_ms, eval_ms = server duration (ns) / 10⁶
pub fn server_duration_ms(duration_ns: Option<f64>) -> Option<f64> {
    duration_ns.map(|d| d / NS_PER_MS)
}

/// cold_load = load_ms ≥ threshold_ms
pub fn is_cold_load(load_ms: Option<f64>, threshold_ms: f64) -> bool {
    load_ms.is_some_and(|l| l >= threshold_ms)
}

/// Summary of the inter-token gaps that a request record stores (`itl_ms`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GapStats {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// {n, mean, p50, p95, max} of the gaps; None when there is no gap (< 2 content chunks).
pub fn gap_stats(gaps_ms: &[f64]) -> Option<GapStats> {
    if gaps_ms.is_empty() {
        return None;
    }
    let mut sorted = gaps_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(GapStats {
        n: gaps_ms.len(),
        mean: fmean(gaps_ms.iter().copied())?,
        p50: percentile_sorted(&sorted, 0.50),
        p95: percentile_sorted(&sorted, 0.95),
        max: sorted[sorted.len() - 1],
    })
}

/// Percentile of sorted data by linear interpolation between closest ranks
/// (numpy's default method, Python `statistics.quantiles(method="inclusive")`).
pub fn percentile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of no data");
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

/// Arithmetic mean, None for no values (`statistics.fmean`).
pub fn fmean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

// ------------------------------------------------------------------------------------------
// Run level, single suite
// ------------------------------------------------------------------------------------------

/// decode_tps = Σ N_out / Σ (eval_ms / 10³), over calls with a non-zero eval_ms.
pub fn run_decode_tps(calls: &[(u64, Option<f64>)]) -> Option<f64> {
    let pairs = calls.iter().filter_map(|&(n, e)| e.filter(|&e| e != 0.0).map(|e| (n, e)));
    let (tokens, ms) = pairs.fold((0u64, 0.0), |(t, m), (n, e)| (t + n, m + e));
    let total_s = ms / 1000.0;
    if total_s <= 0.0 {
        return None;
    }
    Some(tokens as f64 / total_s)
}

/// decode_tps_client_run = Σ (N_out − 1) / Σ (t_last_content − t_first_content), over calls
/// with N_out ≥ 2 and a non-zero span (seconds).
pub fn run_decode_tps_client(calls: &[(u64, Option<f64>)]) -> Option<f64> {
    let pairs = calls.iter().filter_map(|&(n, s)| s.filter(|&s| s != 0.0 && n >= 2).map(|s| (n, s)));
    let (tokens, total_s) = pairs.fold((0u64, 0.0), |(t, a), (n, s)| (t + n - 1, a + s));
    if total_s <= 0.0 {
        return None;
    }
    Some(tokens as f64 / total_s)
}

/// ttft_ms_run = mean(ttft_ms) over the run's calls (nulls skipped).
pub fn run_ttft_ms(ttfts: &[Option<f64>]) -> Option<f64> {
    fmean(ttfts.iter().flatten().copied())
}

/// latency_ms = Σ e2e_ms over the run's calls
pub fn run_latency_ms(e2es: &[f64]) -> f64 {
    e2es.iter().sum()
}

// ------------------------------------------------------------------------------------------
// Multi suite
// ------------------------------------------------------------------------------------------

/// t_agent_s = (t_agent_done − t_release) / 10⁹
pub fn agent_time_s(t_release_ns: i64, t_agent_done_ns: i64) -> f64 {
    (t_agent_done_ns - t_release_ns) as f64 / NS_PER_S
}

/// wall_s = (t_last_agent_done − t_release) / 10⁹, together phase
pub fn wall_s(t_release_ns: i64, t_all_done_ns: i64) -> f64 {
    (t_all_done_ns - t_release_ns) as f64 / NS_PER_S
}

/// seq_s = t_collector_alone + t_insight_alone
pub fn seq_s(t_collector_alone_s: f64, t_insight_alone_s: f64) -> f64 {
    t_collector_alone_s + t_insight_alone_s
}

/// speedup = seq_s / wall_s
pub fn speedup(seq: f64, wall: f64) -> f64 {
    seq / wall
}

/// efficiency_pct = speedup / n_agents × 100, with n_agents = 2
pub fn efficiency_pct(speedup_value: f64, n_agents: u32) -> f64 {
    speedup_value / n_agents as f64 * 100.0
}

/// evenness_pct = (t_A + t_B) / (2 · max(t_A, t_B)) × 100, together phase
pub fn evenness_pct(t_collector_s: f64, t_insight_s: f64) -> f64 {
    (t_collector_s + t_insight_s) / (2.0 * t_collector_s.max(t_insight_s)) * 100.0
}

/// tps_ratio = decode_tps(together) / decode_tps(alone), per agent (null when either is 0/null)
pub fn tps_ratio(decode_tps_together: Option<f64>, decode_tps_alone: Option<f64>) -> Option<f64> {
    ratio(decode_tps_together, decode_tps_alone)
}

/// ttft_inflation = ttft_ms(together) / ttft_ms(alone), per agent (null when either is 0/null)
pub fn ttft_inflation(ttft_together_ms: Option<f64>, ttft_alone_ms: Option<f64>) -> Option<f64> {
    ratio(ttft_together_ms, ttft_alone_ms)
}

fn ratio(num: Option<f64>, den: Option<f64>) -> Option<f64> {
    let num = num.filter(|&v| v != 0.0)?;
    let den = den.filter(|&v| v != 0.0)?;
    Some(num / den)
}

/// contention = any agent with tps_ratio < min_tps_ratio or ttft_inflation > max_ttft_inflation
pub fn contention(
    tps_ratios: &[Option<f64>],
    ttft_inflations: &[Option<f64>],
    min_tps_ratio: f64,
    max_ttft_inflation: f64,
) -> bool {
    let slow = tps_ratios.iter().flatten().any(|&r| r < min_tps_ratio);
    let late = ttft_inflations.iter().flatten().any(|&i| i > max_ttft_inflation);
    slow || late
}

/// legacy_contention = speedup < 1.5
pub fn legacy_contention(speedup_value: f64) -> bool {
    speedup_value < 1.5
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn scripted_timing_reconciles() {
        // t_send = 1_000 ns; content at +250 ms, +270 ms, +300 ms, +310 ms; done at +320 ms.
        let t_send = 1_000;
        let content = [250_001_000, 270_001_000, 300_001_000, 310_001_000];
        let t_done = 320_001_000;
        let ttft = ttft_ms(t_send, content.first().copied()).unwrap();
        assert!(close(ttft, 250.0));
        let gaps = inter_token_gaps_ms(&content);
        assert_eq!(gaps.len(), 3);
        assert!(close(gaps[0], 20.0) && close(gaps[1], 30.0) && close(gaps[2], 10.0));
        let e2e = e2e_ms(t_send, t_done);
        assert!(close(e2e, 320.0));
        // ttft + Σ gaps = last-content offset ≤ e2e
        let last_offset = (content[3] - t_send) as f64 / NS_PER_MS;
        assert!(close(ttft + gaps.iter().sum::<f64>(), last_offset));
        assert!(last_offset <= e2e);
        // 4 tokens over 60 ms after the first: 3 / 0.06 s = 50 tok/s
        let tps = decode_tps_client(4, Some(content[0]), Some(content[3])).unwrap();
        assert!(close(tps, 50.0));
        let stats = gap_stats(&gaps).unwrap();
        assert_eq!(stats.n, 3);
        assert!(close(stats.mean, 20.0) && close(stats.p50, 20.0) && close(stats.max, 30.0));
        // p95 of [10, 20, 30]: pos 1.9 → 20 + 0.9·10 = 29
        assert!(close(stats.p95, 29.0));
    }

    #[test]
    fn request_null_rules() {
        assert_eq!(ttft_ms(0, None), None);
        assert_eq!(decode_tps_client(1, Some(0), Some(10)), None);
        assert_eq!(decode_tps_client(5, Some(10), Some(10)), None);
        assert_eq!(decode_tps_client(5, None, None), None);
        assert_eq!(decode_tps_server(Some(0), Some(10.0)), None);
        assert_eq!(decode_tps_server(Some(10), Some(0.0)), None);
        assert_eq!(decode_tps_server(Some(10), None), None);
        assert!(close(decode_tps_server(Some(48), Some(400.0)).unwrap(), 120.0));
        assert!(close(server_duration_ms(Some(101_397_084.0)).unwrap(), 101.397084));
        assert_eq!(gap_stats(&[]), None);
        assert!(is_cold_load(Some(1000.0), 1000.0));
        assert!(!is_cold_load(Some(999.9), 1000.0));
        assert!(!is_cold_load(None, 0.0));
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert!(close(percentile_sorted(&data, 0.5), 5.5));
        assert!(close(percentile_sorted(&data, 0.95), 9.55));
        assert!(close(percentile_sorted(&data, 0.0), 1.0));
        assert!(close(percentile_sorted(&data, 1.0), 10.0));
        assert!(close(percentile_sorted(&[7.0], 0.95), 7.0));
        // unsorted input to gap_stats is sorted first
        let s = gap_stats(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert!(close(s.p50, 2.5) && close(s.max, 10.0) && close(s.mean, 4.0));
        assert!(close(s.p95, 8.95));
    }

    #[test]
    fn run_formulas() {
        // 48 tok in 400 ms and 96 tok in 1200 ms → 144 / 1.6 s = 90 tok/s; a call without
        // eval_ms is left out.
        let calls = [(48, Some(400.0)), (96, Some(1200.0)), (10, None)];
        assert!(close(run_decode_tps(&calls).unwrap(), 90.0));
        assert_eq!(run_decode_tps(&[(5, None), (3, Some(0.0))]), None);
        let spans = [(48, Some(0.47)), (1, Some(0.2)), (96, Some(0.95)), (8, None)];
        assert!(close(run_decode_tps_client(&spans).unwrap(), (47.0 + 95.0) / (0.47 + 0.95)));
        assert_eq!(run_decode_tps_client(&[(1, Some(1.0))]), None);
        assert!(close(run_ttft_ms(&[Some(100.0), None, Some(300.0)]).unwrap(), 200.0));
        assert_eq!(run_ttft_ms(&[None]), None);
        assert!(close(run_latency_ms(&[100.5, 200.25]), 300.75));
    }

    #[test]
    fn multi_formulas() {
        let t_release = 5_000_000_000;
        let collector_alone = 10.0;
        let insight_alone = 12.0;
        let t_c = agent_time_s(t_release, t_release + 11_000_000_000);
        let t_i = agent_time_s(t_release, t_release + 13_000_000_000);
        assert!(close(t_c, 11.0) && close(t_i, 13.0));
        let wall = wall_s(t_release, t_release + 13_000_000_000);
        let seq = seq_s(collector_alone, insight_alone);
        assert!(close(seq, 22.0));
        let sp = speedup(seq, wall);
        assert!(close(sp, 22.0 / 13.0));
        assert!(close(efficiency_pct(sp, 2), 22.0 / 13.0 / 2.0 * 100.0));
        assert!(close(evenness_pct(t_c, t_i), 24.0 / 26.0 * 100.0));
        assert!(close(evenness_pct(5.0, 5.0), 100.0));
        assert!(!legacy_contention(sp));
        assert!(legacy_contention(1.2));
        assert!(close(tps_ratio(Some(80.0), Some(100.0)).unwrap(), 0.8));
        assert_eq!(tps_ratio(Some(80.0), Some(0.0)), None);
        assert_eq!(tps_ratio(None, Some(1.0)), None);
        assert!(close(ttft_inflation(Some(300.0), Some(100.0)).unwrap(), 3.0));
        assert!(contention(&[Some(0.8), Some(0.99)], &[Some(1.0), None], 0.85, 2.0));
        assert!(contention(&[Some(0.9), None], &[Some(2.1), Some(1.0)], 0.85, 2.0));
        assert!(!contention(&[Some(0.85), None], &[Some(2.0), None], 0.85, 2.0));
        assert_eq!(finite(Some(f64::NAN)), None);
        assert_eq!(finite(Some(f64::INFINITY)), None);
        assert_eq!(finite(Some(1.5)), Some(1.5));
    }
}
