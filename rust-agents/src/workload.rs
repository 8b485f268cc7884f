//! The shared workload: prompts from `workload.yaml`, the data set text, and their hashes.
//!
//! Byte-for-byte the same as the Python agents build them:
//! dataset_text = for each `*.csv` in the data set folder, sorted by file name,
//! `"### " + name + "\n" + text.trim_end_matches('\n') + "\n"`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::job::{AgentName, Phase, Stage};

pub const DATASET_PLACEHOLDER: &str = "{{dataset}}";
pub const PREVIOUS_PLACEHOLDER: &str = "{{previous}}";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentPrompts {
    pub analysis: Prompt,
    pub report: Prompt,
}

impl AgentPrompts {
    pub fn stage(&self, stage: Stage) -> &Prompt {
        match stage {
            Stage::Analysis => &self.analysis,
            Stage::Report => &self.report,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFile {
    #[allow(dead_code)]
    version: u32,
    agents: BTreeMap<String, AgentPrompts>,
}

/// Everything an agent run needs from the workload files.
#[derive(Debug, Clone)]
pub struct Workload {
    pub agents: BTreeMap<String, AgentPrompts>,
    pub dataset_text: String,
    pub prompts_sha256: String,
    pub dataset_sha256: String,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The per-call prompt nonce: the first 16 hex digits of
/// sha256("{run_key}|{agent}|{stage}|{phase}|{attempt}"). Ollama's prompt cache has no off
/// switch, so every counted request must differ from its first byte; the Python agents build
/// the same string.
pub fn prompt_nonce(run_key: &str, agent: AgentName, stage: Stage, phase: Phase, attempt: u32) -> String {
    let key = format!("{run_key}|{agent}|{stage}|{phase}|{attempt}");
    let mut hex = sha256_hex(key.as_bytes());
    hex.truncate(16);
    hex
}

/// The `attempt` a call's nonce is made from: each attempt of a run (the job's `attempt`) owns
/// the next `attempts` numbers, one per attempt of a call, so no retry repeats an earlier prompt.
/// Run attempt 1 gives the call's own attempt. The same function as bench/config/workload.py's.
pub fn nonce_attempt(run_attempt: u32, call_attempt: u32, attempts: u32) -> u32 {
    (run_attempt - 1) * attempts + call_attempt
}

/// The data set text: every `*.csv` file of `dir`, in file-name order.
pub fn dataset_text(dir: &Path) -> Result<String> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read dataset_dir {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read dataset_dir {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            bail!("dataset file name {:?} is not UTF-8", entry.file_name());
        };
        if name.ends_with(".csv") && entry.path().is_file() {
            files.push(name.to_string());
        }
    }
    if files.is_empty() {
        bail!("dataset_dir {} holds no *.csv file", dir.display());
    }
    files.sort();
    let mut out = String::new();
    for name in files {
        let path = dir.join(&name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read dataset file {} as UTF-8", path.display()))?;
        out.push_str("### ");
        out.push_str(&name);
        out.push('\n');
        out.push_str(text.trim_end_matches('\n'));
        out.push('\n');
    }
    Ok(out)
}

impl Workload {
    pub fn load(workload_file: &Path, dataset_dir: &Path) -> Result<Workload> {
        let raw = std::fs::read(workload_file)
            .with_context(|| format!("cannot read workload_file {}", workload_file.display()))?;
        let text = std::str::from_utf8(&raw)
            .with_context(|| format!("workload_file {} is not UTF-8", workload_file.display()))?;
        let file: WorkloadFile = serde_yaml::from_str(text)
            .with_context(|| format!("workload_file {} is not a valid workload", workload_file.display()))?;
        let dataset_text = dataset_text(dataset_dir)?;
        Ok(Workload {
            agents: file.agents,
            prompts_sha256: sha256_hex(&raw),
            dataset_sha256: sha256_hex(dataset_text.as_bytes()),
            dataset_text,
        })
    }

    pub fn prompts(&self, agent: AgentName) -> Result<&AgentPrompts> {
        self.agents
            .get(&agent.to_string())
            .with_context(|| format!("the workload has no prompts for agent `agents.{agent}`"))
    }

    /// (system, user) of the analysis call.
    pub fn analysis(&self, agent: AgentName) -> Result<(String, String)> {
        let p = &self.prompts(agent)?.analysis;
        Ok((p.system.clone(), p.user.replace(DATASET_PLACEHOLDER, &self.dataset_text)))
    }

    /// (system, user) of the report call, given the analysis call's text.
    pub fn report(&self, agent: AgentName, previous: &str) -> Result<(String, String)> {
        let p = &self.prompts(agent)?.report;
        Ok((p.system.clone(), p.user.replace(PREVIOUS_PLACEHOLDER, previous)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data")
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tr116-wl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn prompt_nonce_golden() {
        // sha256 of "smoke/single/python/gemma3-270m/gpu0_ctx512_temp08/run_1|single|analysis|single|1",
        // the value the Python agents compute
        let key = "smoke/single/python/gemma3-270m/gpu0_ctx512_temp08/run_1";
        let n = prompt_nonce(key, AgentName::Single, Stage::Analysis, Phase::Single, 1);
        assert_eq!(n, "fc8ae2c437e2a020");
        // every input changes it
        let others = [
            prompt_nonce("x", AgentName::Single, Stage::Analysis, Phase::Single, 1),
            prompt_nonce(key, AgentName::Collector, Stage::Analysis, Phase::Single, 1),
            prompt_nonce(key, AgentName::Single, Stage::Report, Phase::Single, 1),
            prompt_nonce(key, AgentName::Single, Stage::Analysis, Phase::Alone, 1),
            prompt_nonce(key, AgentName::Single, Stage::Analysis, Phase::Single, 2),
        ];
        assert!(others.iter().all(|o| o != &n && o.len() == 16));
        // run attempt 2 of a run with 3 attempts per call starts at 4 (Python: the same)
        assert_eq!([nonce_attempt(1, 1, 3), nonce_attempt(1, 3, 3), nonce_attempt(2, 1, 3)], [1, 3, 4]);
        // the names in the key are the JSON names
        for p in [Phase::Single, Phase::Alone, Phase::Together] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.to_string());
        }
        for s in [Stage::Analysis, Stage::Report] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
    }

    #[test]
    fn dataset_text_layout_and_order() {
        let d = tempdir("layout");
        std::fs::write(d.join("b.csv"), "x,y\n1,2\n\n\n").unwrap();
        std::fs::write(d.join("a.csv"), "k\nv").unwrap();
        std::fs::write(d.join("README.md"), "not data").unwrap();
        std::fs::write(d.join("c.csv.bak"), "nope").unwrap();
        let text = dataset_text(&d).unwrap();
        assert_eq!(text, "### a.csv\nk\nv\n### b.csv\nx,y\n1,2\n");
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn shipped_workload_renders() {
        let data = data();
        let wl = Workload::load(&data.join("workload.yaml"), &data.join("dataset")).unwrap();
        assert!(wl.dataset_text.starts_with("### tr116_multi_agent_original.csv\nmodel,lang,"));
        assert!(wl.dataset_text.ends_with('\n') && !wl.dataset_text.ends_with("\n\n"));
        assert_eq!(wl.prompts_sha256, sha256_hex(&std::fs::read(data.join("workload.yaml")).unwrap()));
        assert_eq!(wl.dataset_sha256.len(), 64);
        for agent in [AgentName::Single, AgentName::Collector, AgentName::Insight] {
            let (system, user) = wl.analysis(agent).unwrap();
            assert!(!system.is_empty());
            assert!(user.contains(&wl.dataset_text) && !user.contains("{{"));
            let (_, user) = wl.report(agent, "PREVIOUS TEXT").unwrap();
            assert!(user.contains("PREVIOUS TEXT") && !user.contains("{{"));
        }
    }

    #[test]
    fn missing_agent_prompts_are_named() {
        let d = tempdir("missing");
        std::fs::write(d.join("a.csv"), "k\n").unwrap();
        let wl_file = d.join("w.yaml");
        std::fs::write(&wl_file, "version: 1\nagents:\n  single:\n    analysis: {system: s, user: \"u {{dataset}}\"}\n    report: {system: s, user: \"r {{previous}}\"}\n").unwrap();
        let wl = Workload::load(&wl_file, &d).unwrap();
        assert_eq!(wl.analysis(AgentName::Single).unwrap().1, "u ### a.csv\nk\n");
        let err = wl.analysis(AgentName::Insight).unwrap_err().to_string();
        assert!(err.contains("agents.insight"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
