//! One streamed chat call over HTTP, for either protocol, with client-side timing.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::errors::{Classifier, ErrorKind, RequestError};
use crate::job::{Api, Options};
use crate::stream::{error_body_message, Progress, ServerStats, StreamError, TimedStream};

/// The environment variable that carries the servers' API key (llama-server `--api-key-file`),
/// sent as `Authorization: Bearer <key>`; an environment variable so that the key is never
/// written to job.json or seen in the agent's command line (bench/clients/rust.py sets it).
pub const API_KEY_ENV: &str = "TR116_API_KEY";

/// The API key of API_KEY_ENV, if it is set and not empty.
pub fn api_key_from_env() -> Option<String> {
    std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty())
}

/// The HTTP client shared by all calls of a process (one connection pool).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    classifier: Classifier,
    api_key: Option<String>,
}

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub endpoint: &'a str,
    pub api: Api,
    pub model: &'a str,
    pub options: &'a Options,
    /// The call's prompt nonce (`workload::prompt_nonce`); None only for stream-bench's loopback
    /// calls, which no prompt cache sees.
    pub nonce: Option<&'a str>,
    pub system: &'a str,
    pub user: &'a str,
}

/// A finished call: its instants, its text and what the server reported.
#[derive(Debug, Clone)]
pub struct ChatOutcome {
    /// Just before the request was sent.
    pub t_send: Instant,
    /// One stamp per content message (a line or event with non-empty text): the instant the
    /// message was complete, read before it was parsed (stream.rs TimedStream).
    pub content_times: Vec<Instant>,
    /// The end of the stream (its terminal event was read).
    pub t_done: Instant,
    pub text: String,
    pub stats: ServerStats,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct OllamaOptions {
    num_predict: i64,
    seed: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_ctx: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_gpu: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_thread: Option<i64>,
}

#[derive(Serialize)]
struct OllamaBody<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    stream: bool,
    options: OllamaOptions,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    model: &'a str,
    messages: [Message<'a>; 2],
    stream: bool,
    stream_options: StreamOptions,
    max_tokens: i64,
    seed: i64,
    cache_prompt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore_eos: Option<bool>,
}

/// The system message: with a nonce, a first line `[run {nonce}]` so the prompt differs from
/// its first byte (Ollama reuses the KV cache of any common prefix).
fn system_content(nonce: Option<&str>, system: &str) -> String {
    match nonce {
        Some(n) => format!("[run {n}]\n{system}"),
        None => system.to_string(),
    }
}

/// The JSON body of a chat request. Ollama gets its `options` (no ignore_eos, which it does not
/// know); llama-server gets OpenAI fields plus seed, cache_prompt=false and ignore_eos when
/// true (num_ctx / num_gpu / num_thread are llama-server launch flags, not request fields).
pub fn request_body(req: &ChatRequest) -> Vec<u8> {
    let system = system_content(req.nonce, req.system);
    let messages = [Message { role: "system", content: &system }, Message { role: "user", content: req.user }];
    let o = req.options;
    let result = match req.api {
        Api::Ollama => serde_json::to_vec(&OllamaBody {
            model: req.model,
            messages,
            stream: true,
            options: OllamaOptions {
                num_predict: o.num_predict,
                seed: o.seed,
                temperature: o.temperature,
                num_ctx: o.num_ctx,
                num_gpu: o.num_gpu,
                num_thread: o.num_thread,
            },
        }),
        Api::Openai => serde_json::to_vec(&OpenAiBody {
            model: req.model,
            messages,
            stream: true,
            stream_options: StreamOptions { include_usage: true },
            max_tokens: o.num_predict,
            seed: o.seed,
            cache_prompt: false,
            temperature: o.temperature,
            ignore_eos: o.ignore_eos.filter(|&b| b),
        }),
    };
    result.expect("a chat body always serialises")
}

/// Render a transport error with its causes on one line.
fn transport_message(err: &reqwest::Error) -> String {
    let mut msg = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

/// A transport failure: a timeout, else `otherwise` (connection before the reply; stream_cut when
/// the connection closed mid-body, as Python's ChunkedEncodingError).
fn transport_error(err: reqwest::Error, endpoint: &str, otherwise: ErrorKind) -> RequestError {
    let kind = if err.is_timeout() { ErrorKind::Timeout } else { otherwise };
    RequestError::new(kind, format!("{endpoint}: {}", transport_message(&err)))
}

/// The kind of a non-200 reply: by its text (a server's own words win), else by its status
/// (error_kinds.yaml `statuses`; bench/core/errors.py classify_http is the same rule).
pub fn http_error_kind(classifier: &Classifier, status: u16, message: &str) -> ErrorKind {
    classifier.classify(message).unwrap_or_else(|| classifier.status_kind(status))
}

impl Client {
    pub fn new(classifier: Classifier) -> anyhow::Result<Client> {
        // One fresh connection per call. llama-server answers a stream with `Keep-Alive` but
        // then closes the socket, so a pooled connection races the server's FIN and the next
        // call fails with "connection closed before message completed"; a POST must not be
        // retried blindly (it would generate twice). A loopback connect costs ~0.1 ms of TTFT.
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()?;
        Ok(Client { http, classifier, api_key: None })
    }

    /// Send this bearer key with every call (None: no Authorization header).
    pub fn with_api_key(mut self, api_key: Option<String>) -> Client {
        self.api_key = api_key;
        self
    }

    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Stream one chat call; fails when it does not complete within `timeout`: one deadline for the
    /// whole call (connect, headers and every read of the body), so a server that trickles bytes
    /// or sends keep-alive lines forever ends at it as `timeout`.
    pub async fn chat(&self, req: &ChatRequest<'_>, timeout: Duration) -> Result<ChatOutcome, RequestError> {
        let url = req.api.chat_url(req.endpoint);
        let endpoint = req.endpoint.trim_end_matches('/');
        let body = request_body(req);
        let mut stream = TimedStream::new(req.api);
        let t_send = Instant::now();
        let year = Duration::from_secs(365 * 86_400);
        let deadline = tokio::time::Instant::from_std(t_send.checked_add(timeout.min(year)).unwrap_or(t_send + year));
        let call = self.stream_call(&url, endpoint, body, &mut stream);
        let result = tokio::time::timeout_at(deadline, call).await;
        match result {
            Ok(Ok(t_done)) => {
                let (content_times, text, stats) = stream.into_parts();
                Ok(ChatOutcome { t_send, content_times, t_done, text, stats })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RequestError::new(
                ErrorKind::Timeout,
                format!(
                    "{endpoint}: no complete response within {:.1} s ({} content chunks received)",
                    timeout.as_secs_f64(),
                    stream.stamps.len()
                ),
            )),
        }
    }

    async fn stream_call(
        &self,
        url: &str,
        endpoint: &str,
        body: Vec<u8>,
        stream: &mut TimedStream<Instant>,
    ) -> Result<Instant, RequestError> {
        let mut request = self.http.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut resp = request
            .send()
            .await
            .map_err(|e| transport_error(e, endpoint, ErrorKind::Connection))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.map_err(|e| transport_error(e, endpoint, ErrorKind::Connection))?;
            let msg = error_body_message(&body);
            let kind = http_error_kind(&self.classifier, status.as_u16(), &msg);
            return Err(RequestError::new(kind, format!("{endpoint}: HTTP {}: {msg}", status.as_u16())));
        }
        let mut clock = Instant::now;
        loop {
            let chunk = resp.chunk().await.map_err(|e| transport_error(e, endpoint, ErrorKind::StreamCut))?;
            let Some(bytes) = chunk else {
                stream.end(&mut clock).map_err(|e| self.stream_error(e, endpoint))?;
                break;
            };
            if stream.read(&bytes, &mut clock).map_err(|e| self.stream_error(e, endpoint))? == Progress::Done {
                break;
            }
        }
        // Anything after the terminal event is ignored; dropping the response closes the socket.
        Ok(Instant::now())
    }

    fn stream_error(&self, err: StreamError, endpoint: &str) -> RequestError {
        match err {
            StreamError::Malformed(m) => RequestError::new(ErrorKind::MalformedStream, format!("{endpoint}: {m}")),
            StreamError::Cut(m) => RequestError::new(ErrorKind::StreamCut, format!("{endpoint}: {m}")),
            StreamError::Server(m) => {
                let kind = self.classifier.classify(&m).unwrap_or(ErrorKind::Http);
                RequestError::new(kind, format!("{endpoint}: {m}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            num_predict: 48,
            seed: 42,
            ignore_eos: Some(true),
            temperature: Some(0.8),
            num_ctx: Some(512),
            num_gpu: Some(0),
            num_thread: None,
        }
    }

    const NONCE: &str = "fc8ae2c437e2a020";

    fn request(api: Api, o: &Options) -> ChatRequest<'_> {
        ChatRequest { endpoint: "http://h", api, model: "m", options: o, nonce: Some(NONCE), system: "S", user: "U" }
    }

    #[test]
    fn ollama_body_drops_ignore_eos() {
        let o = options();
        let v: serde_json::Value = serde_json::from_slice(&request_body(&request(Api::Ollama, &o))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "m",
                "messages": [{"role": "system", "content": "[run fc8ae2c437e2a020]\nS"}, {"role": "user", "content": "U"}],
                "stream": true,
                "options": {"num_predict": 48, "seed": 42, "temperature": 0.8, "num_ctx": 512, "num_gpu": 0}
            })
        );
        let o = Options { temperature: None, num_ctx: None, num_gpu: None, ..options() };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&request(Api::Ollama, &o))).unwrap();
        assert_eq!(v["options"], serde_json::json!({"num_predict": 48, "seed": 42}));
    }

    #[test]
    fn num_thread_goes_to_ollama_only() {
        let o = Options { num_thread: Some(6), ..options() };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&request(Api::Ollama, &o))).unwrap();
        assert_eq!(
            v["options"],
            serde_json::json!({"num_predict": 48, "seed": 42, "temperature": 0.8, "num_ctx": 512, "num_gpu": 0, "num_thread": 6})
        );
        let body = request_body(&request(Api::Openai, &o));
        assert!(!String::from_utf8_lossy(&body).contains("num_thread"), "llama-server threads are launch flags");
    }

    #[test]
    fn system_message_carries_the_nonce_line() {
        let o = options();
        for api in [Api::Ollama, Api::Openai] {
            let v: serde_json::Value = serde_json::from_slice(&request_body(&request(api, &o))).unwrap();
            let system = v["messages"][0]["content"].as_str().unwrap();
            assert_eq!(system, "[run fc8ae2c437e2a020]\nS", "{api}");
            assert_eq!(system.len() - "S".len(), 23, "a fixed 23-character prefix line");
            assert_eq!(v["messages"][1]["content"], "U", "{api}: the user message is untouched");
        }
        let req = ChatRequest { nonce: None, ..request(Api::Openai, &o) };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&req)).unwrap();
        assert_eq!(v["messages"][0]["content"], "S");
    }

    #[test]
    fn http_status_fallbacks() {
        let c = Classifier::from_yaml(
            "kinds:\n  - {kind: oom, class: load, substrings: [out of memory]}\nstatuses:\n  - {status: \"404\", kind: not_found}\n  - {status: \"5xx\", kind: busy}\n",
        )
        .unwrap();
        assert_eq!(http_error_kind(&c, 500, "CUDA error: out of memory"), ErrorKind::Oom);
        assert_eq!(http_error_kind(&c, 404, "page missing"), ErrorKind::NotFound);
        assert_eq!(http_error_kind(&c, 503, "try later"), ErrorKind::Busy);
        assert_eq!(http_error_kind(&c, 502, "Bad Gateway"), ErrorKind::Busy);
        assert_eq!(http_error_kind(&c, 503, "out of memory"), ErrorKind::Oom);
        assert_eq!(http_error_kind(&c, 400, "bad"), ErrorKind::Http);
        assert_eq!(http_error_kind(&Classifier::default(), 503, "try later"), ErrorKind::Http, "no table, no rule");
    }

    #[test]
    fn openai_body_fields() {
        let o = options();
        let v: serde_json::Value = serde_json::from_slice(&request_body(&request(Api::Openai, &o))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "model": "m",
                "messages": [{"role": "system", "content": "[run fc8ae2c437e2a020]\nS"}, {"role": "user", "content": "U"}],
                "stream": true,
                "stream_options": {"include_usage": true},
                "max_tokens": 48,
                "seed": 42,
                "cache_prompt": false,
                "temperature": 0.8,
                "ignore_eos": true
            })
        );
        let o = Options { ignore_eos: Some(false), temperature: None, ..options() };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&request(Api::Openai, &o))).unwrap();
        assert!(v.get("ignore_eos").is_none() && v.get("temperature").is_none());
    }
}
