//! Shared helpers of the integration tests: a minimal in-process HTTP/1.1 loopback server that
//! replays recorded streams, job files, and the schema checker.

#![allow(dead_code)]

pub mod schema;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request the server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// What the server sends back: a status, a content type and the body in pieces, each written
/// (as one HTTP chunk) after its delay.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub pieces: Vec<(Duration, Vec<u8>)>,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            pieces: vec![(Duration::ZERO, body.to_string().into_bytes())],
        }
    }
}

type Handler = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

pub struct TestServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(handler: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else { return };
                let handler = handler.clone();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let _ = serve(sock, handler, rec).await;
                });
            }
        });
        TestServer { addr, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request per connection: read head and body, reply chunked, close.
async fn serve(mut sock: TcpStream, handler: Handler, rec: Arc<Mutex<Vec<Received>>>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    let head_end = loop {
        let mut tmp = [0u8; 4096];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut tmp = [0u8; 65536];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
    let req = Received { method, path, body };
    rec.lock().unwrap().push(req.clone());
    let reply = handler(&req);
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        reply.status, reply.content_type
    );
    sock.write_all(head.as_bytes()).await?;
    for (delay, piece) in reply.pieces {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if piece.is_empty() {
            continue;
        }
        let mut frame = format!("{:x}\r\n", piece.len()).into_bytes();
        frame.extend_from_slice(&piece);
        frame.extend_from_slice(b"\r\n");
        sock.write_all(&frame).await?;
        sock.flush().await?;
    }
    sock.write_all(b"0\r\n\r\n").await?;
    sock.shutdown().await?;
    Ok(())
}

/// A recorded-style Ollama /api/chat stream of `tokens`, one line per token, with the final
/// metrics. Each line is its own piece after `gap`, except that the first token line is split
/// inside a multi-byte character (tokens[0] should contain one).
pub fn ollama_stream(
    model: &str,
    tokens: &[&str],
    gap: Duration,
    eval_ms: f64,
    load_ms: f64,
) -> Vec<(Duration, Vec<u8>)> {
    let mut pieces = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let line = serde_json::json!({
            "model": model, "created_at": "2025-07-07T20:22:19.19314Z",
            "message": {"role": "assistant", "content": t}, "done": false
        })
        .to_string()
            + "\n";
        let bytes = line.into_bytes();
        match (i, bytes.iter().position(|&b| b >= 0xC0)) {
            (0, Some(p)) => {
                pieces.push((gap, bytes[..p + 1].to_vec()));
                pieces.push((Duration::from_millis(1), bytes[p + 1..].to_vec()));
            }
            _ => pieces.push((gap, bytes)),
        }
    }
    let fin = serde_json::json!({
        "model": model, "created_at": "2025-07-07T20:22:19.19314Z",
        "message": {"role": "assistant", "content": ""},
        "done_reason": "length", "done": true,
        "total_duration": ((eval_ms + load_ms + 5.0) * 1e6) as u64,
        "load_duration": (load_ms * 1e6) as u64,
        "prompt_eval_count": 169, "prompt_eval_duration": 5_000_000u64,
        "eval_count": tokens.len(), "eval_duration": (eval_ms * 1e6) as u64
    })
    .to_string()
        + "\n";
    pieces.push((gap, fin.into_bytes()));
    pieces
}

/// An OpenAI-compatible (llama-server) SSE stream of `tokens` with usage and timings.
pub fn sse_stream(model: &str, tokens: &[&str], gap: Duration, predicted_ms: f64) -> Vec<(Duration, Vec<u8>)> {
    let event = |v: Value| format!("data: {v}\n\n").into_bytes();
    let mut pieces = vec![(
        Duration::ZERO,
        event(serde_json::json!({
        "choices": [{"finish_reason": null, "index": 0, "delta": {"role": "assistant", "content": null}}],
        "created": 1762593253, "id": "chatcmpl-1", "model": model, "object": "chat.completion.chunk"})),
    )];
    for t in tokens {
        pieces.push((
            gap,
            event(serde_json::json!({
            "choices": [{"finish_reason": null, "index": 0, "delta": {"content": t}}],
            "created": 1762593253, "id": "chatcmpl-1", "model": model, "object": "chat.completion.chunk"})),
        ));
    }
    pieces.push((
        Duration::ZERO,
        event(serde_json::json!({
        "choices": [{"finish_reason": "length", "index": 0, "delta": {}}],
        "created": 1762593253, "id": "chatcmpl-1", "model": model, "object": "chat.completion.chunk"})),
    ));
    pieces.push((
        Duration::ZERO,
        event(serde_json::json!({
        "choices": [], "created": 1762593253, "id": "chatcmpl-1", "model": model, "object": "chat.completion.chunk",
        "usage": {"completion_tokens": tokens.len(), "prompt_tokens": 321, "total_tokens": tokens.len() + 321},
        "timings": {"cache_n": 0, "prompt_n": 321, "prompt_ms": 12.5, "prompt_per_token_ms": 0.04,
                    "prompt_per_second": 25680.0, "predicted_n": tokens.len(), "predicted_ms": predicted_ms,
                    "predicted_per_token_ms": predicted_ms / tokens.len() as f64,
                    "predicted_per_second": tokens.len() as f64 / predicted_ms * 1000.0}})),
    ));
    pieces.push((Duration::ZERO, b"data: [DONE]\n\n".to_vec()));
    pieces
}

pub fn bench_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data").canonicalize().unwrap()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tr116-agent")
}

/// A fresh scratch folder for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tr116-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn agent(endpoint: &str, api: &str, model: &str) -> Value {
    serde_json::json!({
        "endpoint": endpoint, "api": api, "model": model,
        "options": {"num_predict": 8, "seed": 42, "ignore_eos": true, "temperature": 0.8, "num_ctx": 512, "num_gpu": 0}
    })
}

/// A job with the shipped workload; `agents` maps agent names to agent configs.
pub fn job(suite: &str, agents: Value) -> Value {
    let data = bench_data();
    let mut config = serde_json::json!({"gpu_layers": 0, "ctx": 512, "temperature": 0.8, "seed": 42,
                                        "num_predict": 8, "ignore_eos": true, "scenario": null});
    if suite == "multi" {
        config["agents"] =
            serde_json::json!({"collector": null, "insight": {"gpu_layers": 0, "ctx": 512, "temperature": 0.8}});
    }
    let mut job = serde_json::json!({
        "suite": suite,
        "study": "it",
        "run_index": 1,
        "run_key": format!("it/{suite}/rust/gemma3-270m/gpu0_ctx512_temp08/run_1"),
        "attempt": 1,
        "retries": {"attempts": 1, "wait_s": 0.5, "max_wait_s": 10.0},
        "model": {"name": "gemma3-270m", "slug": "gemma3-270m", "baseline": true},
        "config": config,
        "workload_file": data.join("workload.yaml"),
        "dataset_dir": data.join("dataset"),
        "error_kinds_file": data.join("error_kinds.yaml"),
        "timeout_s": 30,
        "cold_load_ms": 1000,
        "contention": {"min_tps_ratio": 0.85, "max_ttft_inflation": 2.0},
        "agents": agents
    });
    if suite == "multi" {
        // the schema asks a multi job for both orders, and a single job for neither
        job["phase_order"] = serde_json::json!(["alone", "together"]);
        job["alone_order"] = serde_json::json!(["collector", "insight"]);
    }
    job
}

/// The agent's last stderr line, which must be one JSON object valid against
/// bench/data/agent_error.schema.json.
pub fn error_line(stderr: &str) -> Value {
    let line = stderr.lines().last().unwrap_or_else(|| panic!("no stderr line"));
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("last stderr line is not JSON ({e}): {line}"));
    let schema: Value =
        serde_json::from_slice(&std::fs::read(bench_data().join("agent_error.schema.json")).unwrap()).unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("agent_error.schema.json compiles");
    if let Err(e) = validator.validate(&v) {
        panic!("error line {line} does not match agent_error.schema.json: {e}");
    }
    v
}

/// A failed request: exit 3, and an error line with this kind, its class in the shipped
/// error_kinds.yaml, and a message that starts with `prefix`.
pub fn assert_request_failed(out: &Outcome, kind: &str, prefix: &str) {
    use tr116_agents::errors::{Classifier, ErrorKind};
    assert_eq!(out.code, 3, "{}", out.stderr);
    let e = error_line(&out.stderr);
    assert_eq!(e["error_kind"], kind, "{e}");
    let classes = Classifier::load(&bench_data().join("error_kinds.yaml")).unwrap();
    let class = classes.class(serde_json::from_value::<ErrorKind>(kind.to_string().into()).unwrap());
    assert_eq!(e["class"], serde_json::to_value(class).unwrap(), "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with(prefix), "{message:?} should start with {prefix:?}");
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub metrics: Option<Value>,
}

/// Run `tr116-agent <command> --job <job> --out <dir>/metrics.json`.
pub async fn run_job(command: &str, job: &Value, dir: &Path) -> Outcome {
    let job_path = dir.join("job.json");
    let out = dir.join("out/metrics.json");
    std::fs::write(&job_path, serde_json::to_vec_pretty(job).unwrap()).unwrap();
    let output = tokio::process::Command::new(bin())
        .args([command, "--job"])
        .arg(&job_path)
        .arg("--out")
        .arg(&out)
        .arg("--job-schema")
        .arg(bench_data().join("job.schema.json"))
        .output()
        .await
        .unwrap();
    assert!(!dir.join("out/metrics.json.tmp").exists(), "temporary file left behind");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).to_string(),
        metrics: std::fs::read(&out).ok().map(|b| serde_json::from_slice(&b).unwrap()),
    }
}
