//! TR116 Rust agents: streaming clients for Ollama (`/api/chat`, NDJSON) and llama-server
//! (`/v1/chat/completions`, SSE) that run the benchmark's agent workloads and write the
//! per-run `metrics.json` (see `bench/data/metrics.schema.json`).

pub mod agent;
pub mod client;
pub mod errors;
pub mod job;
pub mod metrics;
pub mod multi;
pub mod record;
pub mod stream;
pub mod streambench;
pub mod wire;
pub mod workload;
