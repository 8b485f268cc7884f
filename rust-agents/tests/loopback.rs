//! End-to-end runs of the `tr116-agent` binary against in-process loopback servers that replay
//! recorded Ollama NDJSON and llama-server SSE streams.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::schema::Schema;
use common::*;
use serde_json::{json, Value};
use tr116_agents::job::{AgentName, Phase, Stage};
use tr116_agents::workload::prompt_nonce;

const COLLECTOR_TOKENS: &[&str] = &["Grüße", " from", " the", " collector", ":", " 12", " rows", "."];
const INSIGHT_TOKENS: &[&str] = &["Rust", " is", " 1.9×", " faster", " than", " Python", " here", "."];

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn user_message(body: &Value) -> &str {
    body["messages"][1]["content"].as_str().unwrap()
}

/// The nonce on the system message's first line, `[run {nonce}]`.
fn system_nonce(body: &Value) -> &str {
    let system = body["messages"][0]["content"].as_str().unwrap();
    let line = system.split_once('\n').expect("a nonce line and the prompt").0;
    line.strip_prefix("[run ").and_then(|l| l.strip_suffix(']')).unwrap_or_else(|| panic!("no nonce line: {line:?}"))
}

/// Each request's prompt_nonce is the one its key gives, and the servers saw exactly those.
fn check_nonces(job: &Value, requests: &[Value], sent: &[Received]) {
    let run_key = job["run_key"].as_str().unwrap();
    let attempt = job.get("attempt").map_or(1, |a| a.as_u64().unwrap() as u32);
    fn name<T: serde::de::DeserializeOwned>(v: &Value) -> T {
        serde_json::from_value(v.clone()).unwrap()
    }
    let mut recorded: Vec<&str> = requests
        .iter()
        .map(|r| {
            let want = prompt_nonce(run_key, name(&r["agent"]), name(&r["stage"]), name(&r["phase"]), attempt);
            assert_eq!(r["prompt_nonce"], want.as_str());
            r["prompt_nonce"].as_str().unwrap()
        })
        .collect();
    let mut seen: Vec<&str> = sent.iter().map(|r| system_nonce(&r.body)).collect();
    recorded.sort();
    seen.sort();
    assert_eq!(recorded, seen);
    recorded.dedup();
    assert_eq!(recorded.len(), requests.len(), "every request's prompt differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_job_against_two_ollama_servers() {
    let gap = Duration::from_millis(3);
    let collector = TestServer::start(move |_| Reply {
        status: 200,
        content_type: "application/x-ndjson",
        pieces: ollama_stream("gemma3:270m", COLLECTOR_TOKENS, gap, 20.0, 2.0),
    })
    .await;
    let calls = AtomicUsize::new(0);
    let insight = TestServer::start(move |_| {
        // the first request to this server paid for a model load
        let load_ms = if calls.fetch_add(1, Ordering::SeqCst) == 0 { 1500.0 } else { 3.0 };
        Reply {
            status: 200,
            content_type: "application/x-ndjson",
            pieces: ollama_stream("gemma3:270m", INSIGHT_TOKENS, gap, 40.0, load_ms),
        }
    })
    .await;
    let mut job = job(
        "multi",
        json!({
            "collector": agent(&collector.url(), "ollama", "gemma3:270m"),
            "insight": agent(&insight.url(), "ollama", "gemma3:270m"),
        }),
    );
    job["phase_order"] = json!(["together", "alone"]);
    job["alone_order"] = json!(["insight", "collector"]);
    job["attempt"] = json!(2);
    job["agents"]["insight"]["options"]["num_thread"] = json!(4);
    let dir = scratch("multi");
    let out = run_job("multi", &job, &dir).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "");
    let m = out.metrics.expect("metrics.json written");
    Schema::load().assert_valid(&m);
    // the checker is not vacuous: a record the schema refuses is reported
    let mut bad = m.clone();
    bad["requests"][0]["agent"] = "nobody".into();
    assert!(!Schema::load().errors(&bad).is_empty());

    assert_eq!(m["schema_version"], 1);
    if std::env::var_os("TR116_SHOW").is_some() {
        println!("{}", serde_json::to_string_pretty(&m).unwrap());
    }
    assert_eq!(m["suite"], "multi");
    assert_eq!(m["lang"], "rust");
    assert_eq!(m["client"]["name"], "tr116-agent (reqwest)");
    assert_eq!(m["config"], job["config"], "config is copied verbatim");
    assert_eq!(m["model"], job["model"]);
    assert_eq!(m["workload"]["phase_order"], json!(["together", "alone"]));
    assert_eq!(m["workload"]["dataset_sha256"].as_str().unwrap().len(), 64);

    let requests = m["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 8);
    let offsets: Vec<f64> = requests.iter().map(|r| f(&r["start_offset_ms"])).collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "requests in start order: {offsets:?}");
    for agent in ["collector", "insight"] {
        for phase in ["alone", "together"] {
            let stages: Vec<&str> = requests
                .iter()
                .filter(|r| r["agent"] == agent && r["phase"] == phase)
                .map(|r| r["stage"].as_str().unwrap())
                .collect();
            assert_eq!(stages, ["analysis", "report"], "{agent} {phase}");
        }
    }
    // together ran first: the first four requests are the together phase
    assert!(requests[..4].iter().all(|r| r["phase"] == "together"));
    // alone order: insight, then collector
    assert_eq!(requests[4]["agent"], "insight");
    assert_eq!(requests[6]["agent"], "collector");
    // both agents were released at once in the together phase
    let together_starts: Vec<f64> = requests
        .iter()
        .filter(|r| r["phase"] == "together" && r["stage"] == "analysis")
        .map(|r| f(&r["start_offset_ms"]))
        .collect();
    assert!((together_starts[0] - together_starts[1]).abs() < 50.0, "{together_starts:?}");

    for r in requests {
        let tokens = if r["agent"] == "collector" { COLLECTOR_TOKENS } else { INSIGHT_TOKENS };
        assert_eq!(r["output_text"], tokens.concat());
        assert_eq!(r["content_chunks"], tokens.len());
        assert_eq!(r["output_tokens"], tokens.len());
        assert_eq!(r["output_tokens_estimated"], false);
        assert_eq!(r["prompt_tokens"], 169);
        assert_eq!(r["done_reason"], "length");
        assert_eq!(r["api"], "ollama");
        assert!(r["error"].is_null() && r["error_kind"].is_null());
        let ttft = f(&r["ttft_ms"]);
        let itl = &r["itl_ms"];
        assert_eq!(itl["n"], tokens.len() - 1);
        let last_content = ttft + f(&itl["mean"]) * (tokens.len() - 1) as f64;
        assert!(last_content <= f(&r["e2e_ms"]) + 1e-6, "ttft + Σgaps ≤ e2e");
        assert!(f(&itl["p50"]) <= f(&itl["max"]) && f(&itl["p95"]) <= f(&itl["max"]));
        let eval_ms = if r["agent"] == "collector" { 20.0 } else { 40.0 };
        assert!((f(&r["eval_ms"]) - eval_ms).abs() < 1e-6);
        assert!((f(&r["decode_tps_server"]) - 8.0 / (eval_ms / 1000.0)).abs() < 1e-6);
        assert!(f(&r["decode_tps_client"]) > 0.0);
        assert!((f(&r["prompt_eval_ms"]) - 5.0).abs() < 1e-9);
    }
    // exactly the insight server's first request was a cold load
    let cold: Vec<(&str, &str, &str)> = requests
        .iter()
        .filter(|r| r["cold_load"] == true)
        .map(|r| (r["agent"].as_str().unwrap(), r["phase"].as_str().unwrap(), r["stage"].as_str().unwrap()))
        .collect();
    assert_eq!(cold, [("insight", "together", "analysis")]);
    assert_eq!(m["cold_load"], true);

    let mm = &m["metrics"];
    let (c, i) = (&mm["agents"]["collector"], &mm["agents"]["insight"]);
    assert!((f(&mm["seq_s"]) - (f(&c["t_alone_s"]) + f(&i["t_alone_s"]))).abs() < 1e-9);
    assert!((f(&mm["speedup"]) - f(&mm["seq_s"]) / f(&mm["wall_s"])).abs() < 1e-9);
    assert!((f(&mm["efficiency_pct"]) - f(&mm["speedup"]) * 50.0).abs() < 1e-9);
    let (tc, ti) = (f(&c["t_together_s"]), f(&i["t_together_s"]));
    assert!((f(&mm["wall_s"]) - tc.max(ti)).abs() < 1e-9);
    assert!((f(&mm["evenness_pct"]) - (tc + ti) / (2.0 * tc.max(ti)) * 100.0).abs() < 1e-9);
    assert!((f(&c["decode_tps_alone"]) - 400.0).abs() < 1e-6, "16 tokens / 40 ms");
    assert!((f(&i["decode_tps_together"]) - 200.0).abs() < 1e-6, "16 tokens / 80 ms");
    assert!((f(&c["tps_ratio"]) - 1.0).abs() < 1e-9);
    assert_eq!(mm["legacy_contention"], f(&mm["speedup"]) < 1.5);

    // what the servers were sent
    for (server, name) in [(&collector, "collector"), (&insight, "insight")] {
        let got = server.received();
        assert_eq!(got.len(), 4, "{name}");
        let mut options = json!({"num_predict": 8, "seed": 42, "temperature": 0.8, "num_ctx": 512, "num_gpu": 0});
        if name == "insight" {
            options["num_thread"] = json!(4);
        }
        for r in &got {
            assert_eq!(r.method, "POST");
            assert_eq!(r.path, "/api/chat");
            assert_eq!(r.body["stream"], true);
            assert_eq!(r.body["model"], "gemma3:270m");
            assert_eq!(r.body["options"], options, "{name}");
            assert_eq!(r.body["messages"][0]["role"], "system");
        }
        let analyses: Vec<_> =
            got.iter().filter(|r| user_message(&r.body).contains("### tr116_multi_agent_original.csv\n")).collect();
        assert_eq!(analyses.len(), 2, "{name}: two analysis calls with the data set");
        let tokens = if name == "collector" { COLLECTOR_TOKENS } else { INSIGHT_TOKENS };
        let reports = got.iter().filter(|r| user_message(&r.body).ends_with(&format!("{}\n", tokens.concat()))).count();
        assert_eq!(reports, 2, "{name}: the report calls carry the analysis text");
    }
    let sent: Vec<Received> = collector.received().into_iter().chain(insight.received()).collect();
    check_nonces(&job, requests, &sent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_job_against_llama_server_sse() {
    let tokens = ["Hello", " wörld", " 🚀", " and", " more", " tokens", " here", "."];
    let server = TestServer::start(move |_| Reply {
        status: 200,
        content_type: "text/event-stream",
        pieces: sse_stream("gemma3-270m", &tokens, Duration::from_millis(2), 40.0),
    })
    .await;
    let mut job = job("single", json!({"single": agent(&server.url(), "openai", "gemma3-270m")}));
    job["agents"]["single"]["options"]["num_thread"] = json!(4);
    let dir = scratch("single");
    let out = run_job("single", &job, &dir).await;
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let m = out.metrics.expect("metrics.json written");
    Schema::load().assert_valid(&m);
    assert!(m["workload"].get("phase_order").is_none());
    let requests = m["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["stage"], "analysis");
    assert_eq!(requests[1]["stage"], "report");
    for r in requests {
        assert_eq!(r["agent"], "single");
        assert_eq!(r["phase"], "single");
        assert_eq!(r["api"], "openai");
        assert_eq!(r["output_text"], tokens.concat());
        assert_eq!(r["output_tokens"], 8);
        assert_eq!(r["prompt_tokens"], 321);
        assert_eq!(r["eval_ms"], 40.0);
        assert_eq!(r["prompt_eval_ms"], 12.5);
        assert!(r["load_ms"].is_null());
        assert!((f(&r["decode_tps_server"]) - 200.0).abs() < 1e-9);
        assert_eq!(r["done_reason"], "length");
    }
    // llama-server reports no load time, so no call is flagged cold
    assert_eq!(requests[0]["cold_load"], false);
    assert_eq!(requests[1]["cold_load"], false);
    assert_eq!(m["cold_load"], false);
    let mm = &m["metrics"];
    assert!((f(&mm["decode_tps"]) - 200.0).abs() < 1e-9);
    assert_eq!(mm["output_tokens"], 16);
    let e2e_sum = f(&requests[0]["e2e_ms"]) + f(&requests[1]["e2e_ms"]);
    assert!((f(&mm["latency_ms"]) - e2e_sum).abs() < 1e-9);
    let ttft_mean = (f(&requests[0]["ttft_ms"]) + f(&requests[1]["ttft_ms"])) / 2.0;
    assert!((f(&mm["ttft_ms"]) - ttft_mean).abs() < 1e-9);

    let got = server.received();
    assert_eq!(got.len(), 2);
    let body = &got[0].body;
    assert_eq!(got[0].path, "/v1/chat/completions");
    assert_eq!(body["max_tokens"], 8);
    assert_eq!(body["seed"], 42);
    assert_eq!(body["temperature"], 0.8);
    assert_eq!(body["ignore_eos"], true);
    assert_eq!(body["cache_prompt"], false);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert!(body.get("num_ctx").is_none() && body.get("options").is_none());
    assert!(body.get("num_thread").is_none(), "llama-server threads are launch flags");
    assert!(user_message(&got[1].body).contains(&tokens.concat()));
    check_nonces(&job, requests, &got);
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn failing_single(tag: &str, api: &str, reply: Reply, timeout_s: f64) -> (Outcome, String) {
    let server = TestServer::start(move |_| reply.clone()).await;
    let mut job = job("single", json!({"single": agent(&server.url(), api, "gemma3-270m")}));
    job["timeout_s"] = json!(timeout_s);
    let dir = scratch(tag);
    let out = run_job("single", &job, &dir).await;
    assert!(out.metrics.is_none(), "no metrics.json after a failed request");
    assert_eq!(out.stderr.lines().count(), 1, "one stderr line: {:?}", out.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
    (out, server.url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_requests_exit_3_with_their_kind() {
    let oom =
        json!({"error": "llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer"});
    let (out, url) = failing_single("oom", "ollama", Reply::json(500, &oom), 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "oom", &format!("{url}: HTTP 500: llama runner process has terminated"));

    let nf = json!({"error": "model 'nope' not found"});
    let (out, url) = failing_single("nf", "ollama", Reply::json(404, &nf), 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "not_found", &format!("{url}: HTTP 404: model 'nope' not found"));

    let loading = json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}});
    let (out, url) = failing_single("loading", "openai", Reply::json(503, &loading), 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "loading", &format!("{url}: HTTP 503: Loading model"));

    let busy = json!({"error": "please come back later"});
    let (out, url) = failing_single("busy", "ollama", Reply::json(503, &busy), 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "busy", &format!("{url}: HTTP 503: please come back later"));

    let nf = json!({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}});
    let (out, _) = failing_single("nf2", "openai", Reply::json(404, &nf), 30.0).await;
    assert_request_failed(&out, "not_found", "");

    let teapot =
        Reply { status: 418, content_type: "text/plain", pieces: vec![(Duration::ZERO, b"short and stout".to_vec())] };
    let (out, url) = failing_single("teapot", "openai", teapot, 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "http", &format!("{url}: HTTP 418: short and stout"));

    // an SSE stream that stops without data: [DONE]: a cut (one attempt per call in this job)
    let mut pieces = sse_stream("m", &["a", "b"], Duration::ZERO, 1.0);
    pieces.pop();
    let cut = Reply { status: 200, content_type: "text/event-stream", pieces };
    let (out, url) = failing_single("nodone", "openai", cut, 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "stream_cut", &format!("{url}: "));

    // a line that is not the protocol
    let garbage = Reply {
        status: 200,
        content_type: "application/x-ndjson",
        pieces: vec![(Duration::ZERO, b"{\"message\": {\"content\": \"x\"\n".to_vec())],
    };
    let (out, url) = failing_single("garbage", "ollama", garbage, 30.0).await;
    assert_request_failed(&out, "malformed_stream", &format!("{url}: "));

    // an error line in the middle of an Ollama stream
    let mut pieces = ollama_stream("m", &["a", "b"], Duration::ZERO, 1.0, 1.0);
    pieces.truncate(2);
    pieces.push((
        Duration::ZERO,
        b"{\"error\":\"an error was encountered while running the model: CUDA error: out of memory\"}\n".to_vec(),
    ));
    let mid = Reply { status: 200, content_type: "application/x-ndjson", pieces };
    let (out, url) = failing_single("midstream", "ollama", mid, 30.0).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "oom", &format!("{url}: an error was encountered"));

    // a server slower than timeout_s
    let slow = Reply {
        status: 200,
        content_type: "application/x-ndjson",
        pieces: ollama_stream("m", &["a", "b", "c"], Duration::from_millis(400), 1.0, 1.0),
    };
    let t0 = std::time::Instant::now();
    let (out, url) = failing_single("timeout", "ollama", slow, 0.5).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "timeout", &format!("{url}: "));
    assert!(t0.elapsed() < Duration::from_secs(10));
}

/// A transient failure is retried per call, not per job: the cut call is sent again with the next
/// nonce, the other call once, and only the successful attempts are recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_is_retried_per_call_with_a_new_nonce() {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let server = TestServer::start(move |_| {
        let mut pieces = ollama_stream("m", COLLECTOR_TOKENS, Duration::ZERO, 2.0, 0.0);
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            pieces.truncate(3); // the first call ends before its done line
        }
        Reply { status: 200, content_type: "application/x-ndjson", pieces }
    })
    .await;
    let mut job = job("single", json!({"single": agent(&server.url(), "ollama", "gemma3-270m")}));
    job["attempt"] = json!(2);
    job["retries"] = json!({"attempts": 3, "wait_s": 0.01, "max_wait_s": 0.05});
    let dir = scratch("retry");
    let out = run_job("single", &job, &dir).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = server.received();
    assert_eq!(got.len(), 3, "analysis twice, report once");
    let run_key = job["run_key"].as_str().unwrap();
    let nonce = |stage, attempt| prompt_nonce(run_key, AgentName::Single, stage, Phase::Single, attempt);
    // run attempt 2 with 3 attempts per call: its calls' nonces start at attempt 4
    let sent: Vec<&str> = got.iter().map(|r| system_nonce(&r.body)).collect();
    assert_eq!(sent, [nonce(Stage::Analysis, 4), nonce(Stage::Analysis, 5), nonce(Stage::Report, 4)]);
    let requests = out.metrics.unwrap()["requests"].as_array().unwrap().clone();
    let recorded: Vec<&str> = requests.iter().map(|r| r["prompt_nonce"].as_str().unwrap()).collect();
    assert_eq!(recorded, [sent[1], sent[2]]);
    // each record says which try of its call made it
    let tries: Vec<u64> = requests.iter().map(|r| r["call_attempt"].as_u64().unwrap()).collect();
    assert_eq!(tries, [2, 1]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_exits_3() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let job = job("single", json!({"single": agent(&format!("http://127.0.0.1:{port}"), "ollama", "m")}));
    let dir = scratch("refused");
    let out = run_job("single", &job, &dir).await;
    assert_eq!(out.code, 3);
    assert_request_failed(&out, "connection", "");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_exit_2_naming_the_key() {
    let dir = scratch("badjob");
    let mut j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    j.as_object_mut().unwrap().remove("timeout_s");
    let out = run_job("single", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("timeout_s"), "{}", out.stderr);

    let mut j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    j["agents"]["single"]["options"]["num_predict"] = json!("many");
    let out = run_job("single", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("key `agents/single/options/num_predict`"), "{}", out.stderr);

    let j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    let out = run_job("multi", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`suite`"), "{}", out.stderr);

    let mut j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    j.as_object_mut().unwrap().remove("run_key");
    let out = run_job("single", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("run_key"), "{}", out.stderr);

    let mut j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    j["attempt"] = json!(0);
    let out = run_job("single", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("`attempt`"), "{}", out.stderr);

    let mut j = job("single", json!({"single": agent("http://127.0.0.1:9", "ollama", "m")}));
    j["dataset_dir"] = json!("/nonexistent/tr116");
    let out = run_job("single", &j, &dir).await;
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("dataset_dir"), "{}", out.stderr);

    std::fs::write(dir.join("broken.json"), "{ not json").unwrap();
    let output = tokio::process::Command::new(bin())
        .args(["single", "--job"])
        .arg(dir.join("broken.json"))
        .args(["--out", "/dev/null/never"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let e = error_line(&String::from_utf8_lossy(&output.stderr));
    assert!(e["error_kind"].is_null() && e["class"].is_null(), "{e}");
    assert!(e["message"].as_str().unwrap().contains("not JSON"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

async fn stream_bench(api: &str, reply: Reply, requests: u32) -> Value {
    let server = TestServer::start(move |_| reply.clone()).await;
    let output = tokio::process::Command::new(bin())
        .args(["stream-bench", "--url", &server.url(), "--api", api, "--requests", &requests.to_string()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    assert_eq!(server.received().len(), requests as usize + 1, "one uncounted warm-up call");
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_bench_prints_one_json_line() {
    let tokens: Vec<String> = (0..500).map(|i| format!(" t{i}")).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let sse = Reply {
        status: 200,
        content_type: "text/event-stream",
        pieces: sse_stream("bench", &refs, Duration::ZERO, 5.0),
    };
    let v = stream_bench("openai", sse, 3).await;
    assert_eq!(v["client"], "rust");
    assert_eq!(v["api"], "openai");
    assert_eq!(v["requests"], 3);
    assert_eq!(v["tokens"], 1500);
    let (tokens_per_s, wall) = (f(&v["tokens_per_s"]), f(&v["wall_s"]));
    assert!((tokens_per_s - 1500.0 / wall).abs() / tokens_per_s < 1e-9);
    assert!(f(&v["cpu_s"]) >= 0.0);
    assert!((f(&v["cpu_us_per_token"]) - f(&v["cpu_s"]) * 1e6 / 1500.0).abs() < 1e-6);
    assert!((f(&v["decode_tps_server_mean"]) - 100_000.0).abs() < 1e-6, "500 tokens / 5 ms");
    assert!(v["decode_tps_client_mean"].is_number() || v["decode_tps_client_mean"].is_null());
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 10, "{keys:?}");

    let nd = Reply {
        status: 200,
        content_type: "application/x-ndjson",
        pieces: ollama_stream("bench", &refs, Duration::ZERO, 10.0, 0.0),
    };
    let v = stream_bench("ollama", nd, 2).await;
    assert_eq!(v["api"], "ollama");
    assert_eq!(v["tokens"], 1000);
    assert!((f(&v["decode_tps_server_mean"]) - 50_000.0).abs() < 1e-6);
}
