//! The shared golden vectors of bench/data/golden/, through the Rust functions. tests/
//! test_golden_vectors.py runs the same files through the Python ones, so the two clients are held
//! to one set of expected values rather than to each other.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tr116_agents::agent::AgentRun;
use tr116_agents::errors::{Classifier, ErrorKind, RequestError};
use tr116_agents::job::{AgentName, Api, Contention, Job, JobSchema, Phase, Stage};
use tr116_agents::multi::{multi_metrics, AgentPhases};
use tr116_agents::record::{request_record, single_metrics, CallContext, CallTiming, RequestRecord};
use tr116_agents::stream::{Progress, ServerStats, StreamError, TimedStream};
use tr116_agents::workload::{nonce_attempt, prompt_nonce};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../bench/data")
}

fn golden(name: &str) -> Value {
    let path = data().join("golden").join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn classifier() -> Classifier {
    Classifier::load(&data().join("error_kinds.yaml")).unwrap()
}

/// Equal within a relative 1e-9 (both null, or both numbers).
fn assert_num(case: &str, field: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (None, None) => assert!(want.is_null(), "{case}: {field}: expected {want}, got null"),
        (Some(g), Some(w)) => {
            assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{case}: {field}: got {g}, expected {w}")
        }
        (g, _) => panic!("{case}: {field}: got {g:?}, expected {want}"),
    }
}

fn api(v: &Value) -> Api {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("api {v}: {e}"))
}

fn read_bytes(read: &Value) -> Vec<u8> {
    match (read.get("data"), read.get("hex")) {
        (Some(d), None) => d.as_str().unwrap().as_bytes().to_vec(),
        (None, Some(h)) => hex::decode(h.as_str().unwrap()).unwrap(),
        _ => panic!("a read has data or hex: {read}"),
    }
}

/// What the client does with a body: each read fed at its instant, the end of the body at eof_ns,
/// stopping at the terminal message. The same loop as client.rs, on a scripted clock.
fn run_stream(case: &Value) -> Result<(TimedStream<i64>, i64), RequestError> {
    let mut stream = TimedStream::new(api(&case["api"]));
    let to_error = |e: StreamError| match e {
        StreamError::Malformed(m) => RequestError::new(ErrorKind::MalformedStream, m),
        StreamError::Cut(m) => RequestError::new(ErrorKind::StreamCut, m),
        StreamError::Server(m) => classifier().error(ErrorKind::Http, m),
    };
    for read in case["reads"].as_array().unwrap() {
        let t = read["t_ns"].as_i64().unwrap();
        if stream.read(&read_bytes(read), &mut || t).map_err(to_error)? == Progress::Done {
            return Ok((stream, t));
        }
    }
    let eof = case["eof_ns"].as_i64().unwrap();
    stream.end(&mut || eof).map_err(to_error)?;
    Ok((stream, eof))
}

fn assert_counts(case: &str, stats: &ServerStats, want: &Value) {
    let count = |v: &Value| v.as_u64();
    assert_eq!(stats.output_tokens, count(&want["output_tokens"]), "{case}: output_tokens");
    assert_eq!(stats.prompt_tokens, count(&want["prompt_tokens"]), "{case}: prompt_tokens");
    assert_eq!(stats.prompt_cached_tokens, count(&want["prompt_cached_tokens"]), "{case}: prompt_cached_tokens");
    assert_num(case, "load_ms", stats.load_ms, &want["load_ms"]);
    assert_num(case, "prompt_eval_ms", stats.prompt_eval_ms, &want["prompt_eval_ms"]);
    assert_num(case, "eval_ms", stats.eval_ms, &want["eval_ms"]);
    assert_eq!(stats.done_reason.as_deref(), want["done_reason"].as_str(), "{case}: done_reason");
}

#[test]
fn stream_bodies() {
    let doc = golden("streams.json");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let want = &case["expect"];
        match (run_stream(case), want.get("error_kind")) {
            (Ok((stream, t_done)), None) => {
                let texts: Vec<&str> = stream.texts().collect();
                let want_texts: Vec<&str> =
                    want["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
                assert_eq!(texts, want_texts, "{name}: texts");
                let want_stamps: Vec<i64> =
                    want["stamps_ns"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
                assert_eq!(stream.stamps, want_stamps, "{name}: stamps");
                assert_eq!(t_done, want["t_done_ns"].as_i64().unwrap(), "{name}: t_done");
                assert_counts(name, stream.stats(), &want["counts"]);
            }
            (Err(e), Some(kind)) => assert_eq!(&serde_json::to_value(e.kind).unwrap(), kind, "{name}: {e}"),
            (Ok(_), Some(kind)) => panic!("{name}: expected {kind}, the stream was accepted"),
            (Err(e), None) => panic!("{name}: {e}"),
        }
    }
}

fn ctx(agent: AgentName, phase: Phase, stage: Stage) -> CallContext {
    CallContext {
        agent,
        stage,
        phase,
        endpoint: "http://golden".into(),
        api: Api::Ollama,
        model: "m".into(),
        prompt_nonce: "0123456789abcdef".into(),
        call_attempt: 1,
    }
}

#[test]
fn request_records() {
    let doc = golden("requests.json");
    let (t0, t_send) = (doc["run_t0_ns"].as_i64().unwrap(), doc["t_send_ns"].as_i64().unwrap());
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut case = case.clone();
        case["eof_ns"] = Value::from(i64::MAX); // every record case ends with its terminal message
        let (stream, t_done) = run_stream(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (stamps, text, stats) = stream.into_parts();
        // record.rs measures from the run start
        let timing = CallTiming {
            t_send_ns: t_send - t0,
            content_ns: stamps.iter().map(|t| t - t0).collect(),
            t_done_ns: t_done - t0,
        };
        let cold = case["cold_load_ms"].as_f64().unwrap();
        let r = request_record(&ctx(AgentName::Single, Phase::Single, Stage::Analysis), &timing, &stats, text, cold);
        let got = serde_json::to_value(&r).unwrap();
        let want = &case["expect"];
        for (field, w) in want.as_object().unwrap() {
            let g = &got[field];
            if field == "itl_ms" && !w.is_null() {
                assert_eq!(g["n"], w["n"], "{name}: itl_ms.n");
                for stat in ["mean", "p50", "p95", "max"] {
                    assert_num(name, &format!("itl_ms.{stat}"), g[stat].as_f64(), &w[stat]);
                }
            } else if w.is_f64() || (w.is_null() && g.is_f64()) {
                assert_num(name, field, g.as_f64(), w);
            } else {
                assert_eq!(g, w, "{name}: {field}");
            }
        }
    }
}

fn call(c: &Value, agent: AgentName, phase: Phase, stage: Stage) -> RequestRecord {
    let timing = CallTiming {
        t_send_ns: c["t_send_ns"].as_i64().unwrap(),
        content_ns: c["content_ns"].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect(),
        t_done_ns: c["t_done_ns"].as_i64().unwrap(),
    };
    let stats = ServerStats {
        output_tokens: c["output_tokens"].as_u64(),
        eval_ms: c["eval_ms"].as_f64(),
        ..Default::default()
    };
    request_record(&ctx(agent, phase, stage), &timing, &stats, String::new(), 1000.0)
}

fn calls(v: &Value, agent: AgentName, phase: Phase) -> Vec<RequestRecord> {
    let stages = [Stage::Analysis, Stage::Report];
    v.as_array().unwrap().iter().enumerate().map(|(i, c)| call(c, agent, phase, stages[i.min(1)])).collect()
}

#[test]
fn single_run_metrics() {
    for case in golden("runs.json")["single"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let m = single_metrics(&calls(&case["calls"], AgentName::Single, Phase::Single));
        let want = &case["expect"];
        assert_num(name, "decode_tps", m.decode_tps, &want["decode_tps"]);
        assert_num(name, "decode_tps_client", m.decode_tps_client, &want["decode_tps_client"]);
        assert_num(name, "ttft_ms", m.ttft_ms, &want["ttft_ms"]);
        assert_num(name, "latency_ms", Some(m.latency_ms), &want["latency_ms"]);
        assert_eq!(m.output_tokens, want["output_tokens"].as_u64().unwrap(), "{name}");
    }
}

#[test]
fn multi_run_metrics() {
    let base = Instant::now();
    let at = |ns: i64| base + Duration::from_nanos(ns as u64);
    for case in golden("runs.json")["multi"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let run = |phase: Phase, agent: AgentName| {
            let key = if phase == Phase::Alone { "alone" } else { "together" };
            let v = &case[key][agent.to_string().as_str()];
            let calls = calls(&v["calls"], agent, phase);
            // the agent is done when its last call's stream has ended
            let t_done = at(calls.last().unwrap().timing.t_done_ns);
            AgentRun { agent, calls, t_release: at(v["t_release_ns"].as_i64().unwrap()), t_done }
        };
        let phases = |agent| AgentPhases { alone: run(Phase::Alone, agent), together: run(Phase::Together, agent) };
        let c = &case["contention"];
        let thresholds = Contention {
            min_tps_ratio: c["min_tps_ratio"].as_f64().unwrap(),
            max_ttft_inflation: c["max_ttft_inflation"].as_f64().unwrap(),
        };
        let m = multi_metrics(&phases(AgentName::Collector), &phases(AgentName::Insight), thresholds);
        let got = serde_json::to_value(&m).unwrap();
        let want = &case["expect"];
        for field in ["wall_s", "seq_s", "speedup", "efficiency_pct", "evenness_pct"] {
            assert_num(name, field, got[field].as_f64(), &want[field]);
        }
        assert_eq!(got["contention"], want["contention"], "{name}: contention");
        assert_eq!(got["legacy_contention"], want["legacy_contention"], "{name}: legacy_contention");
        for agent in ["collector", "insight"] {
            let (g, w) = (&got["agents"][agent], &want["agents"][agent]);
            assert_eq!(g.as_object().unwrap().len(), w.as_object().unwrap().len(), "{name}: {agent}");
            for (field, wv) in w.as_object().unwrap() {
                assert_num(name, &format!("{agent}.{field}"), g[field].as_f64(), wv);
            }
        }
    }
}

/// The steps suite runs the Python agents only; its vectors check the formulas the Rust metrics
/// share with it: the phase times, wall, speedup (from the step's seq_s = N × t_alone_s),
/// efficiency over N agents, the pooled and per-agent rates and ratios, contention over N agents.
#[test]
fn steps_run_metrics_shared_formulas() {
    use tr116_agents::metrics;
    for case in golden("runs.json")["steps"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let want = &case["expect"];
        // the records' agent label does not enter these numbers (the Rust agents have no agentN)
        let records = |v: &Value, phase| calls(&v["calls"], AgentName::Single, phase);
        let release = |v: &Value| v["t_release_ns"].as_i64().unwrap();
        let last_done = |v: &Value| v["calls"].as_array().unwrap().last().unwrap()["t_done_ns"].as_i64().unwrap();
        let (_, alone) = case["alone"].as_object().unwrap().iter().next().unwrap();
        let alone_m = single_metrics(&records(alone, Phase::Alone));
        assert_num(
            name,
            "t_alone_s",
            Some(metrics::agent_time_s(release(alone), last_done(alone))),
            &want["t_alone_s"],
        );
        let together = case["together"].as_object().unwrap();
        let t_release = together.values().map(release).min().unwrap();
        let wall = metrics::wall_s(t_release, together.values().map(last_done).max().unwrap());
        assert_num(name, "wall_s", Some(wall), &want["wall_s"]);
        let speedup = metrics::speedup(want["seq_s"].as_f64().unwrap(), wall);
        assert_num(name, "speedup", Some(speedup), &want["speedup"]);
        let n = together.len() as u32;
        assert_num(name, "efficiency_pct", Some(metrics::efficiency_pct(speedup, n)), &want["efficiency_pct"]);
        let (mut all, mut ratios, mut inflations) = (Vec::new(), Vec::new(), Vec::new());
        for (agent, v) in together {
            let calls = records(v, Phase::Together);
            let m = single_metrics(&calls);
            let (w, at) = (&want["agents"][agent], |field: &str| format!("{agent}.{field}"));
            let t = metrics::agent_time_s(t_release, last_done(v));
            assert_num(name, &at("t_together_s"), Some(t), &w["t_together_s"]);
            assert_num(name, &at("decode_tps_together"), m.decode_tps, &w["decode_tps_together"]);
            assert_num(name, &at("ttft_ms_together"), m.ttft_ms, &w["ttft_ms_together"]);
            ratios.push(metrics::tps_ratio(m.decode_tps, alone_m.decode_tps));
            inflations.push(metrics::ttft_inflation(m.ttft_ms, alone_m.ttft_ms));
            assert_num(name, &at("tps_ratio"), *ratios.last().unwrap(), &w["tps_ratio"]);
            assert_num(name, &at("ttft_inflation"), *inflations.last().unwrap(), &w["ttft_inflation"]);
            all.extend(calls);
        }
        let pooled = single_metrics(&all);
        assert_num(name, "decode_tps_alone", alone_m.decode_tps, &want["decode_tps_alone"]);
        assert_num(name, "ttft_ms_alone", alone_m.ttft_ms, &want["ttft_ms_alone"]);
        assert_num(name, "decode_tps_together", pooled.decode_tps, &want["decode_tps_together"]);
        assert_num(name, "ttft_ms_together", pooled.ttft_ms, &want["ttft_ms_together"]);
        let ratio = metrics::tps_ratio(pooled.decode_tps, alone_m.decode_tps);
        assert_num(name, "tps_ratio", ratio, &want["tps_ratio"]);
        assert_num(
            name,
            "ttft_inflation",
            metrics::ttft_inflation(pooled.ttft_ms, alone_m.ttft_ms),
            &want["ttft_inflation"],
        );
        let th = &case["contention"];
        let (min_ratio, max_inflation) =
            (th["min_tps_ratio"].as_f64().unwrap(), th["max_ttft_inflation"].as_f64().unwrap());
        assert_eq!(
            metrics::contention(&ratios, &inflations, min_ratio, max_inflation),
            want["contention"].as_bool().unwrap(),
            "{name}: contention"
        );
    }
}

#[test]
fn prompt_nonces() {
    let doc = golden("nonces.json");
    let parse = |v: &Value| -> Value { Value::from(v.as_str().unwrap()) };
    for c in doc["prompt_nonce"].as_array().unwrap() {
        let agent: AgentName = serde_json::from_value(parse(&c["agent"])).unwrap();
        let stage: Stage = serde_json::from_value(parse(&c["stage"])).unwrap();
        let phase: Phase = serde_json::from_value(parse(&c["phase"])).unwrap();
        let got =
            prompt_nonce(c["run_key"].as_str().unwrap(), agent, stage, phase, c["attempt"].as_u64().unwrap() as u32);
        assert_eq!(got, c["nonce"].as_str().unwrap(), "{}", c["why"]);
    }
    for c in doc["nonce_attempt"].as_array().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap() as u32;
        assert_eq!(nonce_attempt(n("run_attempt"), n("call_attempt"), n("attempts")), n("attempt"), "{}", c["why"]);
    }
}

#[test]
fn job_files() {
    let doc = golden("jobs.json");
    let schema = JobSchema::load(&data().join("job.schema.json")).unwrap();
    for case in doc["valid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        if let Err(e) = Job::parse(&case["job"].to_string(), &schema) {
            panic!("{name}: refused: {e}");
        }
    }
    for case in doc["invalid"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut job = doc["valid"][case["base"].as_u64().unwrap() as usize]["job"].clone();
        for (path, value) in case["set"].as_object().into_iter().flatten() {
            let (parent, key) = path.rsplit_once('/').map_or(("", path.as_str()), |(p, k)| (p, k));
            let target = if parent.is_empty() { &mut job } else { job.pointer_mut(&format!("/{parent}")).unwrap() };
            target[key] = value.clone();
        }
        for path in case["remove"].as_array().into_iter().flatten() {
            let path = path.as_str().unwrap();
            let (parent, key) = path.rsplit_once('/').map_or(("", path), |(p, k)| (p, k));
            let target = if parent.is_empty() { &mut job } else { job.pointer_mut(&format!("/{parent}")).unwrap() };
            target.as_object_mut().unwrap().remove(key).unwrap_or_else(|| panic!("{name}: no {path}"));
        }
        let err = Job::parse(&job.to_string(), &schema).err().unwrap_or_else(|| panic!("{name}: accepted"));
        let mention = case["mentions"].as_str().unwrap();
        assert!(err.contains(mention), "{name}: {err:?} should mention {mention:?}");
    }
}

#[test]
fn retried_kinds_and_backoff() {
    use tr116_agents::errors::Class;
    use tr116_agents::job::Retries;
    let doc = golden("retries.json");
    let c = classifier();
    for (kind, retried) in doc["retried"].as_object().unwrap() {
        let kind = serde_json::from_value::<ErrorKind>(kind.to_string().into()).unwrap();
        assert_eq!(c.class(kind) == Class::Transient, retried.as_bool().unwrap(), "{kind}");
    }
    for case in doc["backoff"].as_array().unwrap() {
        let r = Retries {
            attempts: 10,
            wait_s: case["wait_s"].as_f64().unwrap(),
            max_wait_s: case["max_wait_s"].as_f64().unwrap(),
        };
        let want: Vec<f64> = case["waits_s"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
        let got: Vec<f64> = (1..=want.len() as u32).map(|n| r.wait_after(n).as_secs_f64()).collect();
        assert_eq!(got, want, "{}", case["why"]);
    }
}

#[test]
fn http_status_kinds() {
    use tr116_agents::client::http_error_kind;
    use tr116_agents::errors::Class;
    use tr116_agents::stream::error_body_message;
    let doc = golden("retries.json");
    let c = classifier();
    for case in doc["http_statuses"]["cases"].as_array().unwrap() {
        let status = case["status"].as_u64().unwrap() as u16;
        let message = error_body_message(case["body"].as_str().unwrap().as_bytes());
        let kind = http_error_kind(&c, status, &message);
        assert_eq!(serde_json::to_value(kind).unwrap(), case["kind"], "{case}");
        assert_eq!(c.class(kind) == Class::Transient, case["retried"].as_bool().unwrap(), "{case}");
    }
}
