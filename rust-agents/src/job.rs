//! The job file the Python orchestrator writes for one run (`--job JOB.json`).
//!
//! A job is checked against `bench/data/job.schema.json` (the Python side checks the same schema
//! before it writes the file), then deserialised into these structs, which refuse unknown keys, so
//! a key the schema allows but the agent would not read cannot slip through either.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Which streaming protocol an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Ollama native `/api/chat`, NDJSON.
    Ollama,
    /// OpenAI-compatible `/v1/chat/completions` (llama-server), SSE.
    Openai,
}

impl Api {
    /// The chat path under an endpoint.
    pub fn chat_path(self) -> &'static str {
        match self {
            Api::Ollama => "/api/chat",
            Api::Openai => "/v1/chat/completions",
        }
    }

    /// The full chat URL for a base endpoint; a URL that already ends in the path is kept.
    pub fn chat_url(self, endpoint: &str) -> String {
        let base = endpoint.trim_end_matches('/');
        if base.ends_with(self.chat_path()) {
            base.to_string()
        } else {
            format!("{base}{}", self.chat_path())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suite {
    Single,
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Single,
    Alone,
    Together,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentName {
    Single,
    Collector,
    Insight,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Analysis,
    Report,
}

crate::display_as_wire_name!(Api, Suite, Phase, AgentName, Stage);

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    pub name: String,
    pub slug: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contention {
    pub min_tps_ratio: f64,
    pub max_ttft_inflation: f64,
}

impl Default for Contention {
    fn default() -> Self {
        Contention { min_tps_ratio: 0.85, max_ttft_inflation: 2.0 }
    }
}

/// Generation options of one agent; only num_predict and seed are required.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    pub num_predict: i64,
    pub seed: i64,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub num_ctx: Option<i64>,
    #[serde(default)]
    pub num_gpu: Option<i64>,
    /// Ollama only; llama-server's threads are launch flags.
    #[serde(default)]
    pub num_thread: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub endpoint: String,
    pub api: Api,
    pub model: String,
    pub options: Options,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub suite: Suite,
    pub study: String,
    pub run_index: u32,
    /// Names the run (study/suite/lang/model/config/run_N); seeds the prompt nonces.
    pub run_key: String,
    /// 1, or higher when the orchestrator runs the same run again (a fallback-ladder rung, its
    /// retry pass), so the new attempt's prompts are new too (`workload::nonce_attempt`).
    pub attempt: u32,
    /// How each call retries transient failures.
    pub retries: Retries,
    pub model: ModelInfo,
    pub config: serde_json::Value,
    pub workload_file: PathBuf,
    pub dataset_dir: PathBuf,
    pub error_kinds_file: PathBuf,
    pub timeout_s: f64,
    pub cold_load_ms: f64,
    pub contention: Contention,
    #[serde(default)]
    pub phase_order: Option<Vec<Phase>>,
    #[serde(default)]
    pub alone_order: Option<Vec<AgentName>>,
    pub agents: BTreeMap<String, AgentConfig>,
}

/// Per-call retries of the transient kinds (`class: transient` in error_kinds.yaml), with the
/// orchestrator's numbers (bench/clients/agents.py): retry n waits wait_s × 2^(n−1) s, at most max_wait_s.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    pub attempts: u32,
    pub wait_s: f64,
    pub max_wait_s: f64,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { attempts: 1, wait_s: 0.5, max_wait_s: 10.0 }
    }
}

impl Retries {
    /// The wait before the attempt after `attempt` (tenacity's wait_exponential).
    pub fn wait_after(&self, attempt: u32) -> std::time::Duration {
        let s = self.wait_s * 2f64.powi(attempt.saturating_sub(1).min(60) as i32);
        std::time::Duration::from_secs_f64(s.min(self.max_wait_s))
    }
}

/// A job file that cannot be run (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("bad job file {path}: {message}")]
pub struct JobError {
    pub path: String,
    pub message: String,
}

/// `bench/data/job.schema.json`, compiled.
pub struct JobSchema(jsonschema::Validator);

/// The schema beside the sources this binary was built from; the orchestrator passes its own
/// (`--job-schema`), which a binary built elsewhere (the Docker image) needs.
pub const DEFAULT_SCHEMA_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/data/job.schema.json");

impl JobSchema {
    pub fn load(path: &Path) -> Result<JobSchema, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the job schema {}: {e}", path.display()))?;
        JobSchema::parse(&text).map_err(|e| format!("job schema {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<JobSchema, String> {
        let schema: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        jsonschema::draft202012::new(&schema).map(JobSchema).map_err(|e| format!("not a JSON Schema: {e}"))
    }

    /// Every violation, each as "key `a/b`: what is wrong" (at most five).
    pub fn violations(&self, job: &serde_json::Value) -> Vec<String> {
        self.0
            .iter_errors(job)
            .take(5)
            .map(|e| {
                let key = e.instance_path().as_str().trim_start_matches('/').to_string();
                if key.is_empty() {
                    format!("{e}")
                } else {
                    format!("key `{key}`: {e}")
                }
            })
            .collect()
    }
}

impl Job {
    pub fn load(path: &Path, schema: &JobSchema) -> Result<Job, JobError> {
        let err = |message: String| JobError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        Job::parse(&text, schema).map_err(err)
    }

    /// Parse a job and check it against the schema. The message names the offending key.
    pub fn parse(text: &str, schema: &JobSchema) -> Result<Job, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let violations = schema.violations(&value);
        if !violations.is_empty() {
            return Err(violations.join("; "));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("key `{path}`: {}", e.inner())
            }
        })
    }

    /// The agents of this job's suite, in name order.
    pub fn agent_names(&self) -> Vec<AgentName> {
        match self.suite {
            Suite::Single => vec![AgentName::Single],
            Suite::Multi => vec![AgentName::Collector, AgentName::Insight],
        }
    }

    /// An agent's configuration (present for every agent of the suite after `parse`).
    pub fn agent(&self, name: AgentName) -> &AgentConfig {
        &self.agents[&name.to_string()]
    }

    /// Multi suite: the order of the two phases (default alone, then together).
    pub fn phase_order(&self) -> Vec<Phase> {
        self.phase_order.clone().unwrap_or_else(|| vec![Phase::Alone, Phase::Together])
    }

    /// Multi suite: the order of the agents in the alone phase (default collector, insight).
    pub fn alone_order(&self) -> Vec<AgentName> {
        self.alone_order.clone().unwrap_or_else(|| vec![AgentName::Collector, AgentName::Insight])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn single_job_json() -> serde_json::Value {
        serde_json::json!({
            "suite": "single",
            "study": "smoke",
            "run_index": 1,
            "run_key": "smoke/single/rust/gemma3-270m/gpu0_ctx512_temp08/run_1",
            "attempt": 1,
            "retries": {"attempts": 3, "wait_s": 0.5, "max_wait_s": 10.0},
            "model": {"name": "gemma3-270m", "slug": "gemma3-270m", "baseline": true},
            "config": {"gpu_layers": 0, "ctx": 512, "temperature": 0.8, "seed": 42, "num_predict": 48},
            "workload_file": "/abs/bench/data/workload.yaml",
            "dataset_dir": "/abs/bench/data/dataset",
            "error_kinds_file": "/abs/bench/data/error_kinds.yaml",
            "timeout_s": 300,
            "cold_load_ms": 1000,
            "contention": {"min_tps_ratio": 0.85, "max_ttft_inflation": 2.0},
            "agents": {
                "single": {"endpoint": "http://127.0.0.1:18434", "api": "openai", "model": "gemma3-270m",
                           "options": {"num_predict": 48, "seed": 42, "ignore_eos": true, "temperature": 0.8,
                                       "num_ctx": 512, "num_gpu": 0}}
            }
        })
    }

    fn schema() -> JobSchema {
        JobSchema::load(Path::new(DEFAULT_SCHEMA_FILE)).expect("bench/data/job.schema.json compiles")
    }

    fn parse(v: &serde_json::Value) -> Result<Job, String> {
        Job::parse(&v.to_string(), &schema())
    }

    #[test]
    fn parses_the_documented_single_job() {
        let job = parse(&single_job_json()).unwrap();
        assert_eq!(job.suite, Suite::Single);
        assert_eq!(job.agent(AgentName::Single).api, Api::Openai);
        assert_eq!(job.agent(AgentName::Single).options.ignore_eos, Some(true));
        assert_eq!(job.timeout_s, 300.0);
        assert_eq!(job.model.baseline, Some(true));
        assert_eq!(job.run_key, "smoke/single/rust/gemma3-270m/gpu0_ctx512_temp08/run_1");
        assert_eq!(job.attempt, 1);
        assert_eq!(job.retries, Retries { attempts: 3, wait_s: 0.5, max_wait_s: 10.0 });
        assert_eq!(job.agent(AgentName::Single).options.num_thread, None);
    }

    #[test]
    fn run_key_attempt_and_num_thread() {
        let mut v = single_job_json();
        v["attempt"] = 3.into();
        v["agents"]["single"]["options"]["num_thread"] = 4.into();
        let job = parse(&v).unwrap();
        assert_eq!(job.attempt, 3);
        assert_eq!(job.agent(AgentName::Single).options.num_thread, Some(4));

        for bad in [serde_json::json!(0), serde_json::json!(-1), serde_json::json!("2")] {
            let mut v = single_job_json();
            v["attempt"] = bad;
            assert!(parse(&v).unwrap_err().contains("key `attempt`"));
        }
        for (key, bad) in [("run_key", serde_json::json!("")), ("run_key", serde_json::json!(7))] {
            let mut v = single_job_json();
            v[key] = bad;
            assert!(parse(&v).unwrap_err().contains("key `run_key`"));
        }
        let mut v = single_job_json();
        v.as_object_mut().unwrap().remove("run_key");
        assert!(parse(&v).unwrap_err().contains("\"run_key\" is a required property"));
        let mut v = single_job_json();
        v["agents"]["single"]["options"]["num_thread"] = 0.into();
        assert!(parse(&v).unwrap_err().contains("key `agents/single/options/num_thread`"));
    }

    #[test]
    fn retries_and_their_waits() {
        let mut v = single_job_json();
        v["retries"] = serde_json::json!({"attempts": 3, "wait_s": 0.5, "max_wait_s": 1.5});
        let r = parse(&v).unwrap().retries;
        assert_eq!(r.attempts, 3);
        let waits: Vec<f64> = (1..=4).map(|n| r.wait_after(n).as_secs_f64()).collect();
        assert_eq!(waits, [0.5, 1.0, 1.5, 1.5], "doubling, capped");
        v["retries"]["attempts"] = 0.into();
        assert!(parse(&v).unwrap_err().contains("retries/attempts"));
        v["retries"] = serde_json::json!({"attempts": 2, "wait_s": -1.0, "max_wait_s": 1.0});
        assert!(parse(&v).unwrap_err().contains("retries/wait_s"));
        v["retries"] = serde_json::json!({"attempts": 2});
        assert!(parse(&v).unwrap_err().contains("wait_s"));
        v.as_object_mut().unwrap().remove("retries");
        assert!(parse(&v).unwrap_err().contains("retries"), "a job says how its calls retry");
    }

    #[test]
    fn multi_job_orders() {
        let mut v = single_job_json();
        v["suite"] = "multi".into();
        let agent = v["agents"]["single"].clone();
        v["agents"] = serde_json::json!({"collector": agent.clone(), "insight": agent});
        v["phase_order"] = serde_json::json!(["together", "alone"]);
        v["alone_order"] = serde_json::json!(["insight", "collector"]);
        let job = parse(&v).unwrap();
        assert_eq!(job.phase_order(), vec![Phase::Together, Phase::Alone]);
        assert_eq!(job.alone_order(), vec![AgentName::Insight, AgentName::Collector]);
        v["phase_order"] = serde_json::json!(["alone", "alone"]);
        assert!(parse(&v).unwrap_err().contains("phase_order"));
        v["phase_order"] = serde_json::json!(["alone", "single"]);
        assert!(parse(&v).unwrap_err().contains("phase_order/1"));
        v.as_object_mut().unwrap().remove("phase_order");
        assert!(parse(&v).unwrap_err().contains("phase_order"), "a multi job names its phase order");
        let mut single = single_job_json();
        single["phase_order"] = serde_json::json!(["alone", "together"]);
        assert!(parse(&single).unwrap_err().contains("phase_order"), "a single job has no phases");
    }

    #[test]
    fn errors_name_the_key() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("timeout_s", Box::new(|v| drop(v.as_object_mut().unwrap().remove("timeout_s")))),
            ("surprise", Box::new(|v| v["surprise"] = 1.into())),
            ("seed", Box::new(|v| drop(v["agents"]["single"]["options"].as_object_mut().unwrap().remove("seed")))),
            ("key `timeout_s`", Box::new(|v| v["timeout_s"] = "soon".into())),
            ("key `timeout_s`", Box::new(|v| v["timeout_s"] = 0.into())),
            (
                "key `agents/single/options/temperature`",
                Box::new(|v| v["agents"]["single"]["options"]["temperature"] = "hot".into()),
            ),
            ("grpc", Box::new(|v| v["agents"]["single"]["api"] = "grpc".into())),
            ("key `model/slug`", Box::new(|v| v["model"]["slug"] = "Gemma 3".into())),
            ("key `agents`", Box::new(|v| v["suite"] = "multi".into())),
            (
                "key `agents/single/options/num_predict`",
                Box::new(|v| v["agents"]["single"]["options"]["num_predict"] = 0.into()),
            ),
            ("key `agents/single/endpoint`", Box::new(|v| v["agents"]["single"]["endpoint"] = "127.0.0.1:1".into())),
            ("first_after_start", Box::new(|v| v["first_after_start"] = false.into())),
        ];
        for (needle, mutate) in cases {
            let mut v = single_job_json();
            mutate(&mut v);
            let err = parse(&v).unwrap_err();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn chat_urls() {
        assert_eq!(Api::Ollama.chat_url("http://h:1/"), "http://h:1/api/chat");
        assert_eq!(Api::Openai.chat_url("http://h:1"), "http://h:1/v1/chat/completions");
        assert_eq!(Api::Openai.chat_url("http://h:1/v1/chat/completions"), "http://h:1/v1/chat/completions");
    }
}
