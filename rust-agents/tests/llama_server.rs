//! A real end-to-end single job against a running llama-server (OpenAI-compatible API).
//!
//! Runs only when `TR116_LLAMA_URL` (e.g. http://127.0.0.1:18434) and `TR116_LLAMA_MODEL` (the
//! model id the server reports) are set; otherwise it prints why it was skipped and passes.
//! `TR116_LLAMA_NUM_PREDICT` sets the tokens per call (default 16). A server the bundle started
//! wants its API key: set `TR116_API_KEY` (the agent reads it, client.rs API_KEY_ENV).

mod common;

use std::io::Write;

use common::schema::Schema;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_job_against_a_real_llama_server() {
    let (url, model) = match (std::env::var("TR116_LLAMA_URL"), std::env::var("TR116_LLAMA_MODEL")) {
        (Ok(u), Ok(m)) if !u.is_empty() && !m.is_empty() => (u, m),
        _ => {
            // Written to the stderr handle, not through eprintln!, so the harness does not
            // swallow the reason.
            let _ = writeln!(
                std::io::stderr(),
                "llama_server test skipped: set TR116_LLAMA_URL and TR116_LLAMA_MODEL to a running llama-server"
            );
            return;
        }
    };
    let num_predict: u64 = std::env::var("TR116_LLAMA_NUM_PREDICT").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let mut agent = agent(&url, "openai", &model);
    agent["options"] = json!({"num_predict": num_predict, "seed": 42, "ignore_eos": true, "temperature": 0.0});
    let mut job = job("single", json!({"single": agent}));
    job["config"]["num_predict"] = json!(num_predict);
    job["config"]["temperature"] = json!(0.0);
    job["timeout_s"] = json!(600);
    job.as_object_mut().unwrap().remove("phase_order");
    job.as_object_mut().unwrap().remove("alone_order");
    let dir = scratch("llama");
    let out = run_job("single", &job, &dir).await;
    assert_eq!(out.code, 0, "tr116-agent failed: {}", out.stderr);
    let m = out.metrics.expect("metrics.json written");
    Schema::load().assert_valid(&m);

    let requests = m["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["stage"], "analysis");
    assert_eq!(requests[1]["stage"], "report");
    for r in requests {
        assert_eq!(r["api"], "openai");
        assert_eq!(r["model"], model.as_str());
        assert_eq!(r["output_tokens_estimated"], false, "llama-server reports usage/timings");
        let n = r["output_tokens"].as_u64().unwrap();
        assert!(n >= 1 && n <= num_predict, "output_tokens {n}");
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
        assert!(r["eval_ms"].as_f64().unwrap() > 0.0);
        assert!(r["prompt_eval_ms"].as_f64().unwrap() > 0.0);
        assert!(r["load_ms"].is_null());
        assert!(r["decode_tps_server"].as_f64().unwrap() > 0.0);
        assert!(r["done_reason"].is_string());
        let chunks = r["content_chunks"].as_u64().unwrap();
        assert!(chunks >= 1 && !r["output_text"].as_str().unwrap().is_empty());
        let ttft = r["ttft_ms"].as_f64().unwrap();
        let e2e = r["e2e_ms"].as_f64().unwrap();
        assert!(ttft > 0.0 && ttft <= e2e, "ttft {ttft} e2e {e2e}");
        if chunks >= 2 {
            let itl = &r["itl_ms"];
            let last = ttft + itl["mean"].as_f64().unwrap() * itl["n"].as_f64().unwrap();
            assert!(last <= e2e + 1e-6, "ttft + Σgaps ≤ e2e");
        }
    }
    // the analysis prompt carries the data set, so it is longer than the report prompt's frame
    assert!(requests[0]["prompt_tokens"].as_u64().unwrap() > 100);
    let mm = &m["metrics"];
    assert!(mm["decode_tps"].as_f64().unwrap() > 0.0);
    assert!(mm["latency_ms"].as_f64().unwrap() > 0.0);
    eprintln!(
        "llama-server {url} ({model}): decode_tps {:.1}, ttft {:.1} ms, latency {:.1} ms",
        mm["decode_tps"].as_f64().unwrap(),
        mm["ttft_ms"].as_f64().unwrap(),
        mm["latency_ms"].as_f64().unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
