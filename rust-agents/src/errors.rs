//! Failure classification, shared with the Python client through `bench/data/error_kinds.yaml`.
//!
//! The first kind whose substring occurs in the error text (case-insensitive) wins; a non-200 reply
//! whose text matches none takes the kind of its status (the table's `statuses`, else `http`).
//! Other failures the classifier does not recognise keep the kind the client gave them:
//! `connection`, `timeout`, `stream_cut`, `malformed_stream` or `http`. Each kind's class in the table decides whether a
//! call is retried here (transient) or the failure goes back to the orchestrator.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The kind of a failed request, as written to `error_kind` and to the stderr error line, and as
/// `error_kinds.yaml` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Oom,
    NotFound,
    Connection,
    Timeout,
    Busy,
    Loading,
    StreamCut,
    MalformedStream,
    Http,
    Context,
    Crash,
}

crate::display_as_wire_name!(ErrorKind);

/// A failed request: its kind and a one-line message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct RequestError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RequestError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        // stderr carries exactly one line per failure.
        let message: String = message.into();
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        RequestError { kind, message }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindsFile {
    kinds: Vec<KindEntry>,
    #[serde(default)]
    statuses: Vec<StatusEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusEntry {
    /// Three characters, each a digit or `x` (any digit): "404", "5xx".
    status: String,
    kind: ErrorKind,
}

/// What the harness does about a kind (`class` in the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Retried per call, with backoff.
    Transient,
    /// The config does not fit: the orchestrator's fallback ladder takes over.
    Load,
    /// Retrying cannot help.
    Permanent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindEntry {
    kind: ErrorKind,
    class: Class,
    #[serde(default)]
    substrings: Vec<String>,
}

/// The ordered substring classifier of `error_kinds.yaml`, with each kind's class.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    kinds: Vec<(ErrorKind, Class, Vec<String>)>,
    statuses: Vec<(String, ErrorKind)>,
}

impl Classifier {
    pub fn load(path: &Path) -> Result<Classifier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read error kinds file {}", path.display()))?;
        Classifier::from_yaml(&text).with_context(|| format!("error kinds file {}", path.display()))
    }

    pub fn from_yaml(text: &str) -> Result<Classifier> {
        let file: KindsFile = serde_yaml::from_str(text).context("invalid YAML")?;
        let mut kinds = Vec::with_capacity(file.kinds.len());
        for entry in file.kinds {
            let subs = entry.substrings.iter().map(|s| s.to_lowercase()).collect();
            kinds.push((entry.kind, entry.class, subs));
        }
        let mut statuses = Vec::with_capacity(file.statuses.len());
        for entry in file.statuses {
            let pattern = entry.status.to_ascii_lowercase();
            if pattern.len() != 3 || !pattern.bytes().all(|b| b.is_ascii_digit() || b == b'x') {
                anyhow::bail!("statuses[].status: {:?} is not a status pattern like 404 or 5xx", entry.status);
            }
            statuses.push((pattern, entry.kind));
        }
        Ok(Classifier { kinds, statuses })
    }

    /// The kind of a non-200 reply by its status alone: the first matching pattern, else http.
    pub fn status_kind(&self, status: u16) -> ErrorKind {
        let code = status.to_string();
        let matches = |p: &str| p.len() == code.len() && p.bytes().zip(code.bytes()).all(|(p, c)| p == b'x' || p == c);
        self.statuses.iter().find(|(p, _)| matches(p)).map_or(ErrorKind::Http, |(_, kind)| *kind)
    }

    /// The first kind with a substring contained in `text`, compared case-insensitively.
    pub fn classify(&self, text: &str) -> Option<ErrorKind> {
        let lower = text.to_lowercase();
        self.kinds.iter().find(|(_, _, subs)| subs.iter().any(|s| lower.contains(s.as_str()))).map(|(kind, _, _)| *kind)
    }

    /// The class of a kind; a kind the table does not list is permanent (never retried).
    pub fn class(&self, kind: ErrorKind) -> Class {
        self.kinds.iter().find(|(k, _, _)| *k == kind).map_or(Class::Permanent, |(_, class, _)| *class)
    }

    /// A server-reported failure: the classifier's kind, else `fallback`.
    pub fn error(&self, fallback: ErrorKind, message: impl Into<String>) -> RequestError {
        let message = message.into();
        let kind = self.classify(&message).unwrap_or(fallback);
        RequestError::new(kind, message)
    }
}

/// The agent's last stderr line when it fails (`bench/data/agent_error.schema.json`): one JSON
/// object, read by bench/clients/rust.py::run_job. A failed request has its kind and class; a refused job
/// or the agent's own failure has neither.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorLine {
    pub error_kind: Option<ErrorKind>,
    pub class: Option<Class>,
    pub message: String,
}

impl ErrorLine {
    pub fn request(err: &RequestError, classifier: &Classifier) -> ErrorLine {
        ErrorLine {
            error_kind: Some(err.kind),
            class: Some(classifier.class(err.kind)),
            message: one_line(&err.message),
        }
    }

    /// Not a request failure: a bad job (exit 2) or the agent's own (exit 1).
    pub fn other(message: impl std::fmt::Display) -> ErrorLine {
        ErrorLine { error_kind: None, class: None, message: one_line(&message.to_string()) }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an error line always serialises")
    }
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        "(no message)".to_string()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Classifier {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data/error_kinds.yaml");
        Classifier::load(&path).expect("bench/data/error_kinds.yaml loads")
    }

    #[test]
    fn real_ollama_strings() {
        let c = shipped();
        let cases = [
            ("llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer", ErrorKind::Oom),
            ("status code 500: llama runner process has terminated: error loading model: unable to allocate CUDA0 buffer", ErrorKind::Oom),
            ("llama runner process has terminated: CUDA error: out of memory", ErrorKind::Oom),
            ("model requires more system memory (7.1 GiB) than is available (3.2 GiB)", ErrorKind::Oom),
            ("allocating 512.00 MiB on device 0: cudaMalloc failed: out of memory", ErrorKind::Oom),
            ("model 'x' not found", ErrorKind::NotFound),
            ("model \"gemma3:270m\" not found, try pulling it first", ErrorKind::NotFound),
            ("pull model manifest: file does not exist", ErrorKind::NotFound),
            ("server busy, please try again.  maximum pending requests exceeded", ErrorKind::Busy),
            ("Loading model", ErrorKind::Loading),
            ("timed out waiting for llama runner to start - progress 0.00 - ", ErrorKind::Crash),
            ("llama runner process has terminated: exit status 2", ErrorKind::Crash),
            ("llama runner process has terminated: signal: killed", ErrorKind::Crash),
            ("an error was encountered while running the model: unexpected EOF", ErrorKind::Crash),
            ("llama-server process no longer running: -1", ErrorKind::Crash),
            ("model runner has unexpectedly stopped, this may be due to resource limitations or an internal error, check ollama server logs for details", ErrorKind::Crash),
            ("the request exceeds the available context size, try increasing it", ErrorKind::Context),
        ];
        for (text, kind) in cases {
            assert_eq!(c.classify(text), Some(kind), "{text}");
        }
        assert_eq!(c.classify("error sending request: connection refused"), None);
    }

    #[test]
    fn classes_decide_what_is_retried() {
        let c = shipped();
        for kind in
            [ErrorKind::Connection, ErrorKind::Timeout, ErrorKind::Busy, ErrorKind::Loading, ErrorKind::StreamCut]
        {
            assert_eq!(c.class(kind), Class::Transient, "{kind}");
        }
        for kind in [ErrorKind::Oom, ErrorKind::Crash] {
            assert_eq!(c.class(kind), Class::Load, "{kind}");
        }
        for kind in [ErrorKind::NotFound, ErrorKind::Context, ErrorKind::MalformedStream, ErrorKind::Http] {
            assert_eq!(c.class(kind), Class::Permanent, "{kind}");
        }
        assert_eq!(Classifier::default().class(ErrorKind::Busy), Class::Permanent, "an unlisted kind");
    }

    #[test]
    fn a_status_pattern_is_three_digits_or_x() {
        // the shipped table's statuses are checked by both suites through
        // bench/data/golden/retries.json (http_statuses)
        let bad = Classifier::from_yaml("kinds: []\nstatuses:\n  - {status: \"5x\", kind: busy}\n").unwrap_err();
        assert!(format!("{bad:#}").contains("status pattern"));
        let c = Classifier::from_yaml("kinds: []\nstatuses:\n  - {status: \"4X4\", kind: not_found}\n").unwrap();
        assert_eq!(
            (c.status_kind(404), c.status_kind(414), c.status_kind(440)),
            (ErrorKind::NotFound, ErrorKind::NotFound, ErrorKind::Http)
        );
    }

    #[test]
    fn case_insensitive_and_order_matters() {
        let c = Classifier::from_yaml(
            "kinds:\n  - {kind: oom, class: load, substrings: [\"Out Of Memory\"]}\n  - {kind: crash, class: load, substrings: [terminated]}\n",
        )
        .unwrap();
        assert_eq!(c.classify("process TERMINATED: CUDA error: OUT OF MEMORY"), Some(ErrorKind::Oom));
        assert_eq!(c.classify("process terminated"), Some(ErrorKind::Crash));
        let e = c.error(ErrorKind::Http, "HTTP 500:\nsomething\n  odd");
        assert_eq!(e.kind, ErrorKind::Http);
        assert_eq!(e.to_string(), "http: HTTP 500: something odd");
    }

    #[test]
    fn error_lines() {
        let c = shipped();
        let e = c.error(ErrorKind::Http, "http://h:1: Loading model\n(retry later)");
        let line = ErrorLine::request(&e, &c).to_json();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error_kind": "loading", "class": "transient",
                               "message": "http://h:1: Loading model (retry later)"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&ErrorLine::other("bad job file x: key `a`").to_json()).unwrap();
        assert_eq!(v, serde_json::json!({"error_kind": null, "class": null, "message": "bad job file x: key `a`"}));
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let err = Classifier::from_yaml("kinds:\n  - {kind: gremlins, class: load, substrings: [x]}\n").unwrap_err();
        assert!(format!("{err:#}").contains("gremlins"));
    }
}
