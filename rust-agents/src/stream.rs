//! Incremental parsers for the two streaming protocols.
//!
//! * Ollama `/api/chat`: NDJSON, one JSON object per line, ending with a `"done": true` object.
//! * llama-server (OpenAI-compatible) `/v1/chat/completions`: Server-Sent Events, `data: {json}`
//!   events ending with `data: [DONE]`.
//!
//! Network reads are fed as they come; a line (and a UTF-8 character) may be split across any
//! number of reads. Complete lines are parsed in place from the read buffer when possible, and
//! JSON is deserialised into borrowed structs, so a steady stream costs no allocation per token
//! beyond the growth of the caller's text buffer.
//!
//! The stream semantics are the Python client's (bench/clients/streaming.py), case for case in
//! bench/data/golden/streams.json: a content message is an NDJSON line or an SSE event (its
//! `data:` lines, ended by a blank line or by the end of the body) with non-empty generated text,
//! stamped when it is complete; the terminal message (`"done": true`, `data: [DONE]`) ends the
//! stream and nothing after it is read; a null field is an absent one.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::job::Api;

/// A stream that cannot be used: a protocol violation or an error the server sent in-stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamError {
    /// Not the protocol: bad JSON or an unknown SSE line.
    Malformed(String),
    /// The body ended before the terminal event (`done: true` / `[DONE]`).
    Cut(String),
    /// The server reported an error inside a 200 stream (`{"error": ...}`).
    Server(String),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Malformed(m) => write!(f, "malformed stream: {m}"),
            StreamError::Cut(m) => write!(f, "stream cut: {m}"),
            StreamError::Server(m) => write!(f, "server error in stream: {m}"),
        }
    }
}

/// What the server reported about a finished call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerStats {
    pub done_reason: Option<String>,
    /// Generated tokens as counted by the server (eval_count / completion_tokens / predicted_n).
    pub output_tokens: Option<u64>,
    pub prompt_tokens: Option<u64>,
    /// Decode time, ms (eval_duration / 10⁶, or timings.predicted_ms).
    pub eval_ms: Option<f64>,
    /// Prompt processing time, ms (prompt_eval_duration / 10⁶, or timings.prompt_ms).
    pub prompt_eval_ms: Option<f64>,
    /// Model load time, ms (Ollama load_duration / 10⁶; llama-server has none).
    pub load_ms: Option<f64>,
    /// Prompt tokens taken from the engine's cache instead of evaluated (llama.cpp
    /// timings.cache_n; Ollama reports none).
    pub prompt_cached_tokens: Option<u64>,
}

/// Feed state: whether the terminal event (`done: true` / `[DONE]`) has been seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    More,
    Done,
}

/// One incremental parser for either protocol.
#[derive(Debug)]
pub struct StreamParser {
    api: Api,
    line: Vec<u8>,
    event: Vec<u8>,
    has_event: bool,
    done: bool,
    pub stats: ServerStats,
}

const EXCERPT: usize = 160;

/// The longest line (its bytes before the `\n`) and the longest SSE event (its data) a stream may
/// have: a longer one is malformed, refused as soon as its first byte over the limit arrives, so a
/// server cannot grow the client's memory without bound. bench/clients/streaming.py MAX_LINE_BYTES is the
/// same number (tests/test_deadlines.py holds both clients to it).
pub const MAX_LINE_BYTES: usize = 1 << 20;

fn too_long(what: &str) -> StreamError {
    StreamError::Malformed(format!("{what} longer than {MAX_LINE_BYTES} bytes"))
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(EXCERPT).collect();
    if text.chars().count() > EXCERPT {
        out.push('…');
    }
    out
}

impl StreamParser {
    pub fn new(api: Api) -> StreamParser {
        StreamParser {
            api,
            line: Vec::with_capacity(1024),
            event: Vec::with_capacity(1024),
            has_event: false,
            done: false,
            stats: ServerStats::default(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Feed one network read. `clock` is read once per complete message (an NDJSON line, an SSE
    /// event), before the message is parsed; `on_content` receives that stamp and the text of each
    /// message whose generated text is non-empty, in order. Data after the terminal event is
    /// ignored.
    pub fn feed<T>(
        &mut self,
        mut bytes: &[u8],
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<Progress, StreamError> {
        if self.done {
            return Ok(Progress::Done);
        }
        if !self.line.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                None => {
                    self.hold(bytes)?;
                    return Ok(Progress::More);
                }
                Some(i) => {
                    if self.line.len() + i > MAX_LINE_BYTES {
                        return Err(too_long("a line"));
                    }
                    self.line.extend_from_slice(&bytes[..i]);
                    bytes = &bytes[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    let result = self.line_in(&line, clock, on_content);
                    self.line = line;
                    self.line.clear();
                    result?;
                }
            }
        }
        while !self.done {
            match memchr::memchr(b'\n', bytes) {
                Some(i) if i > MAX_LINE_BYTES => return Err(too_long("a line")),
                Some(i) => {
                    self.line_in(&bytes[..i], clock, on_content)?;
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.hold(bytes)?;
                    break;
                }
            }
        }
        Ok(if self.done { Progress::Done } else { Progress::More })
    }

    /// Keep the start of an unfinished line, within the limit.
    fn hold(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        if self.line.len() + bytes.len() > MAX_LINE_BYTES {
            return Err(too_long("a line"));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// The body has ended. A last line without its newline is still parsed, and an SSE event the
    /// body ended inside is dispatched; a stream that never reached its terminal event was cut.
    pub fn finish<T>(
        &mut self,
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<(), StreamError> {
        if !self.done && !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_in(&line, clock, on_content)?;
        }
        if !self.done && self.api == Api::Openai && self.has_event {
            self.dispatch(clock, on_content)?;
        }
        if self.done {
            Ok(())
        } else {
            Err(StreamError::Cut(match self.api {
                Api::Ollama => "the stream ended before a \"done\": true chunk".into(),
                Api::Openai => "the stream ended without data: [DONE]".into(),
            }))
        }
    }

    fn line_in<T>(
        &mut self,
        line: &[u8],
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<(), StreamError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.api {
            Api::Ollama => self.ndjson_line(line, clock, on_content),
            Api::Openai => self.sse_line(line, clock, on_content),
        }
    }

    // ---- Ollama NDJSON ---------------------------------------------------------------------

    fn ndjson_line<T>(
        &mut self,
        line: &[u8],
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<(), StreamError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let t = clock(); // the message is complete: stamp it before parsing
        let chunk: OllamaChunk = serde_json::from_slice(line)
            .map_err(|e| StreamError::Malformed(format!("bad NDJSON line ({e}): {}", excerpt(line))))?;
        if let Some(err) = chunk.error {
            return Err(StreamError::Server(err.0));
        }
        if let Some(text) = chunk.message.and_then(|m| m.content) {
            if !text.0.is_empty() {
                on_content(t, &text.0);
            }
        }
        if chunk.done.unwrap_or(false) {
            let ns = |v: Option<f64>| Some(v.unwrap_or(0.0) / 1e6);
            self.stats = ServerStats {
                done_reason: chunk.done_reason.map(|t| t.0.into_owned()),
                // metrics are omitempty: an absent count is a zero count, as in Python
                output_tokens: Some(chunk.eval_count.unwrap_or(0)),
                prompt_tokens: Some(chunk.prompt_eval_count.unwrap_or(0)),
                eval_ms: ns(chunk.eval_duration),
                prompt_eval_ms: ns(chunk.prompt_eval_duration),
                load_ms: ns(chunk.load_duration),
                prompt_cached_tokens: None,
            };
            self.done = true;
        }
        Ok(())
    }

    // ---- OpenAI-compatible SSE -------------------------------------------------------------

    fn sse_line<T>(
        &mut self,
        line: &[u8],
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<(), StreamError> {
        if line.is_empty() {
            return if self.has_event { self.dispatch(clock, on_content) } else { Ok(()) };
        }
        if line[0] == b':' {
            return Ok(()); // comment / keep-alive
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.event.len() + usize::from(self.has_event) + value.len() > MAX_LINE_BYTES {
                    return Err(too_long("an SSE event"));
                }
                if self.has_event {
                    self.event.push(b'\n');
                }
                self.event.extend_from_slice(value);
                self.has_event = true;
                Ok(())
            }
            b"event" | b"id" | b"retry" => Ok(()),
            _ => Err(StreamError::Malformed(format!("not an SSE line: {}", excerpt(line)))),
        }
    }

    fn dispatch<T>(
        &mut self,
        clock: &mut dyn FnMut() -> T,
        on_content: &mut dyn FnMut(T, &str),
    ) -> Result<(), StreamError> {
        let t = clock(); // the event is complete: stamp it before parsing
        let data = std::mem::take(&mut self.event);
        self.has_event = false;
        let result = self.sse_event(&data, t, on_content);
        self.event = data;
        self.event.clear();
        result
    }

    fn sse_event<T>(&mut self, data: &[u8], t: T, on_content: &mut dyn FnMut(T, &str)) -> Result<(), StreamError> {
        if data.trim_ascii() == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let chunk: OpenAiChunk = serde_json::from_slice(data)
            .map_err(|e| StreamError::Malformed(format!("bad SSE data ({e}): {}", excerpt(data))))?;
        if let Some(err) = chunk.error {
            return Err(StreamError::Server(err.0));
        }
        if let Some(choice) = chunk.choices.0 {
            if let Some(text) = choice.delta.and_then(|d| d.content) {
                if !text.0.is_empty() {
                    on_content(t, &text.0);
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.stats.done_reason = Some(reason.0.into_owned());
            }
        }
        if let Some(usage) = chunk.usage {
            if usage.completion_tokens.is_some() {
                self.stats.output_tokens = usage.completion_tokens;
            }
            if usage.prompt_tokens.is_some() {
                self.stats.prompt_tokens = usage.prompt_tokens;
            }
        }
        if let Some(t) = chunk.timings {
            if self.stats.output_tokens.is_none() {
                self.stats.output_tokens = t.predicted_n;
            }
            if self.stats.prompt_tokens.is_none() {
                self.stats.prompt_tokens = t.prompt_n;
            }
            if t.predicted_ms.is_some() {
                self.stats.eval_ms = t.predicted_ms;
            }
            if t.prompt_ms.is_some() {
                self.stats.prompt_eval_ms = t.prompt_ms;
            }
            if t.cache_n.is_some() {
                self.stats.prompt_cached_tokens = t.cache_n;
            }
        }
        Ok(())
    }
}

/// One call's stream with the stamps of its content messages: what the client feeds each network
/// read into and builds the call's timing from. `T` is the stamp (`Instant` in the client, scripted
/// nanoseconds in tests). Each content message is stamped once, with the clock read when the
/// message was complete (bench/clients/streaming.py time_stream stamps the same unit).
#[derive(Debug)]
pub struct TimedStream<T> {
    parser: StreamParser,
    /// One stamp per content message.
    pub stamps: Vec<T>,
    /// The generated text, all messages in order.
    pub text: String,
    ends: Vec<usize>,
}

impl<T> TimedStream<T> {
    pub fn new(api: Api) -> TimedStream<T> {
        TimedStream {
            parser: StreamParser::new(api),
            stamps: Vec::with_capacity(1024),
            text: String::with_capacity(4096),
            ends: Vec::with_capacity(1024),
        }
    }

    /// One network read; `Done` once the terminal message is in (stop reading then).
    pub fn read(&mut self, bytes: &[u8], clock: &mut dyn FnMut() -> T) -> Result<Progress, StreamError> {
        let (stamps, text, ends) = (&mut self.stamps, &mut self.text, &mut self.ends);
        self.parser.feed(bytes, clock, &mut |t, s| {
            stamps.push(t);
            text.push_str(s);
            ends.push(text.len());
        })
    }

    /// The body ended (no terminal message yet).
    pub fn end(&mut self, clock: &mut dyn FnMut() -> T) -> Result<(), StreamError> {
        let (stamps, text, ends) = (&mut self.stamps, &mut self.text, &mut self.ends);
        self.parser.finish(clock, &mut |t, s| {
            stamps.push(t);
            text.push_str(s);
            ends.push(text.len());
        })
    }

    /// The text of each content message, in order.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter().copied()).map(|(a, b)| &self.text[a..b])
    }

    pub fn stats(&self) -> &ServerStats {
        &self.parser.stats
    }

    pub fn into_parts(self) -> (Vec<T>, String, ServerStats) {
        (self.stamps, self.text, self.parser.stats)
    }
}

// ---- wire structs (borrowed) ---------------------------------------------------------------

#[derive(Deserialize)]
struct OllamaChunk<'a> {
    #[serde(borrow, default)]
    message: Option<OllamaMessage<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(borrow, default)]
    done_reason: Option<Text<'a>>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    eval_duration: Option<f64>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    prompt_eval_duration: Option<f64>,
    #[serde(default)]
    load_duration: Option<f64>,
    #[serde(default)]
    error: Option<ErrorText>,
}

#[derive(Deserialize)]
struct OllamaMessage<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct OpenAiChunk<'a> {
    #[serde(borrow, default)]
    choices: FirstOf<Choice<'a>>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    timings: Option<Timings>,
    #[serde(default)]
    error: Option<ErrorText>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow, default)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default)]
    content: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Timings {
    #[serde(default)]
    cache_n: Option<u64>,
    #[serde(default)]
    prompt_n: Option<u64>,
    #[serde(default)]
    prompt_ms: Option<f64>,
    #[serde(default)]
    predicted_n: Option<u64>,
    #[serde(default)]
    predicted_ms: Option<f64>,
}

/// A JSON string borrowed from the input when it has no escapes (serde's own `Cow<str>` impl
/// always copies when wrapped in an Option).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(PhantomData))
    }
}

/// The first element of a JSON array (the rest is skipped without allocating); `null` or `[]`
/// give None.
struct FirstOf<T>(Option<T>);

impl<T> Default for FirstOf<T> {
    fn default() -> Self {
        FirstOf(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for FirstOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = FirstOf<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array or null")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstOf(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(FirstOf(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_seq(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let first = seq.next_element::<T>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstOf(first))
            }
        }
        d.deserialize_option(V(PhantomData))
    }
}

/// An error in a stream or an error body: Ollama's `"error": "text"`, OpenAI's
/// `"error": {"message": "text", ...}`, or anything else rendered as JSON.
pub struct ErrorText(pub String);

impl<'de> Deserialize<'de> for ErrorText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(ErrorText(error_message(&v)))
    }
}

fn error_message(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => match map.get("message") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// The message of a non-200 response body: `{"error": "..."}` or `{"error": {"message": ...}}`,
/// else the body text itself (trimmed and shortened).
pub fn error_body_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: ErrorText,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => b.error.0,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(empty body)".to_string()
            } else {
                excerpt(text.as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Run {
        text: String,
        chunks: Vec<String>,
        stats: ServerStats,
        error: Option<StreamError>,
        reads_until_done: Option<usize>,
    }

    /// Feed `body` split at the given byte offsets, then end the stream.
    fn run(api: Api, body: &[u8], cuts: &[usize]) -> Run {
        let mut p = StreamParser::new(api);
        let mut out = Run::default();
        let mut chunks = Vec::new();
        let mut prev = 0;
        let mut pieces: Vec<&[u8]> = Vec::new();
        for &c in cuts {
            pieces.push(&body[prev..c]);
            prev = c;
        }
        pieces.push(&body[prev..]);
        let mut on = |_: (), t: &str| chunks.push(t.to_string());
        let mut clock = || ();
        for (i, piece) in pieces.iter().enumerate() {
            match p.feed(piece, &mut clock, &mut on) {
                Ok(Progress::Done) if out.reads_until_done.is_none() => out.reads_until_done = Some(i + 1),
                Ok(_) => {}
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        if out.error.is_none() {
            if let Err(e) = p.finish(&mut clock, &mut on) {
                out.error = Some(e);
            }
        }
        out.text = chunks.concat();
        out.chunks = chunks;
        out.stats = p.stats.clone();
        out
    }

    const OLLAMA: &str = concat!(
        r#"{"model":"gemma3:270m","created_at":"2025-07-07T20:22:19.1Z","message":{"role":"assistant","content":"Naïve"},"done":false}"#,
        "\n",
        r#"{"model":"gemma3:270m","created_at":"2025-07-07T20:22:19.2Z","message":{"role":"assistant","content":" caf\u00e9 →"},"done":false}"#,
        "\n",
        r#"{"model":"gemma3:270m","created_at":"2025-07-07T20:22:19.3Z","message":{"role":"assistant","content":""},"done":false}"#,
        "\n",
        r#"{"model":"gemma3:270m","created_at":"2025-07-07T20:22:19.4Z","message":{"role":"assistant","content":" 🚀!"},"done_reason":"length","done":true,"total_duration":182242375,"load_duration":41295167,"prompt_eval_count":169,"prompt_eval_duration":24573166,"eval_count":4,"eval_duration":115959084}"#,
        "\n",
    );

    #[test]
    fn ndjson_whole() {
        let r = run(Api::Ollama, OLLAMA.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.chunks, vec!["Naïve", " café →", " 🚀!"]);
        assert_eq!(r.text, "Naïve café → 🚀!");
        assert_eq!(r.stats.done_reason.as_deref(), Some("length"));
        assert_eq!(r.stats.output_tokens, Some(4));
        assert_eq!(r.stats.prompt_tokens, Some(169));
        assert!((r.stats.eval_ms.unwrap() - 115.959084).abs() < 1e-9);
        assert!((r.stats.prompt_eval_ms.unwrap() - 24.573166).abs() < 1e-9);
        assert!((r.stats.load_ms.unwrap() - 41.295167).abs() < 1e-9);
    }

    #[test]
    fn ndjson_every_split_point_including_mid_utf8() {
        let body = OLLAMA.as_bytes();
        let whole = run(Api::Ollama, body, &[]);
        // the rocket emoji is 4 bytes: cut inside it
        let rocket = OLLAMA.find('🚀').unwrap();
        let mid_char = run(Api::Ollama, body, &[rocket + 1, rocket + 3]);
        assert_eq!(mid_char.text, whole.text);
        assert_eq!(mid_char.error, None);
        for cut in 1..body.len() {
            let r = run(Api::Ollama, body, &[cut]);
            assert_eq!(r.error, None, "cut {cut}");
            assert_eq!(r.chunks, whole.chunks, "cut {cut}");
            assert_eq!(r.stats, whole.stats, "cut {cut}");
        }
        // one byte per read
        let cuts: Vec<usize> = (1..body.len()).collect();
        let r = run(Api::Ollama, body, &cuts);
        assert_eq!(r.chunks, whole.chunks);
        assert_eq!(r.reads_until_done, Some(body.len()));
    }

    #[test]
    fn ndjson_absent_metrics_are_zero_and_crlf_and_no_final_newline() {
        let body =
            "{\"message\":{\"content\":\"a\"},\"done\":false}\r\n\r\n{\"message\":{\"content\":\"\"},\"done\":true}";
        let r = run(Api::Ollama, body.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.text, "a");
        assert_eq!(r.stats.output_tokens, Some(0));
        assert_eq!(r.stats.prompt_tokens, Some(0));
        assert_eq!(r.stats.eval_ms, Some(0.0));
        assert_eq!(r.stats.load_ms, Some(0.0));
        assert_eq!(r.stats.done_reason, None);
    }

    #[test]
    fn ndjson_mid_stream_error() {
        let body = concat!(
            r#"{"model":"gemma4","created_at":"2025-10-26T17:21:21.231094Z","message":{"role":"assistant","content":"can"},"done":false}"#,
            "\n",
            r#"{"error":"an error was encountered while running the model"}"#,
            "\n",
        );
        let r = run(Api::Ollama, body.as_bytes(), &[]);
        assert_eq!(r.text, "can");
        assert_eq!(r.error, Some(StreamError::Server("an error was encountered while running the model".into())));
    }

    #[test]
    fn ndjson_malformed_and_truncated() {
        let body = "{\"message\":{\"content\":\"a\"},\"done\":false}\n{\"message\":{\"content\":\"b\"\n";
        let r = run(Api::Ollama, body.as_bytes(), &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(ref m)) if m.contains("bad NDJSON")), "{:?}", r.error);
        let body = "{\"message\":{\"content\":\"a\"},\"done\":false}\n";
        let r = run(Api::Ollama, body.as_bytes(), &[]);
        assert!(matches!(r.error, Some(StreamError::Cut(ref m)) if m.contains("done")), "{:?}", r.error);
        let r = run(Api::Ollama, b"not json at all\n", &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(_))));
        // invalid UTF-8 inside a line is malformed, not a panic
        let r = run(Api::Ollama, b"{\"message\":{\"content\":\"\xff\"},\"done\":true}\n", &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(_))));
    }

    const LLAMA_SSE: &str = concat!(
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],\"created\":1762593253,\"id\":\"chatcmpl-x\",\"model\":\"gemma3-270m\",\"system_fingerprint\":\"b6881-8b11deea4\",\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"Grüße\"}}],\"created\":1762593253,\"id\":\"chatcmpl-x\",\"model\":\"gemma3-270m\",\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" \\\"x\\\" 日本\"}}],\"created\":1762593253,\"id\":\"chatcmpl-x\",\"model\":\"gemma3-270m\",\"object\":\"chat.completion.chunk\"}\n\n",
        ": keep-alive comment\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"created\":1762593253,\"id\":\"chatcmpl-x\",\"model\":\"gemma3-270m\",\"object\":\"chat.completion.chunk\"}\n\n",
        "data: {\"choices\":[],\"created\":1762593253,\"id\":\"chatcmpl-x\",\"model\":\"gemma3-270m\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":2,\"prompt_tokens\":1085,\"total_tokens\":1087},\"timings\":{\"cache_n\":0,\"prompt_n\":1085,\"prompt_ms\":203.378,\"prompt_per_token_ms\":0.187,\"prompt_per_second\":5334.89,\"predicted_n\":2,\"predicted_ms\":9.5,\"predicted_per_token_ms\":4.75,\"predicted_per_second\":210.5}}\n\n",
        "data: [DONE]\n\n",
    );

    #[test]
    fn sse_whole() {
        let r = run(Api::Openai, LLAMA_SSE.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.chunks, vec!["Grüße", " \"x\" 日本"]);
        assert_eq!(r.stats.done_reason.as_deref(), Some("length"));
        assert_eq!(r.stats.output_tokens, Some(2));
        assert_eq!(r.stats.prompt_tokens, Some(1085));
        assert_eq!(r.stats.eval_ms, Some(9.5));
        assert_eq!(r.stats.prompt_eval_ms, Some(203.378));
        assert_eq!(r.stats.prompt_cached_tokens, Some(0));
        assert_eq!(r.stats.load_ms, None);
    }

    #[test]
    fn sse_every_split_point_including_mid_utf8() {
        let body = LLAMA_SSE.as_bytes();
        let whole = run(Api::Openai, body, &[]);
        let kanji = LLAMA_SSE.find('日').unwrap();
        let r = run(Api::Openai, body, &[kanji + 1, kanji + 2]);
        assert_eq!(r.chunks, whole.chunks);
        for cut in 1..body.len() {
            let r = run(Api::Openai, body, &[cut]);
            assert_eq!(r.error, None, "cut {cut}");
            assert_eq!(r.chunks, whole.chunks, "cut {cut}");
            assert_eq!(r.stats, whole.stats, "cut {cut}");
        }
    }

    #[test]
    fn sse_usage_on_finish_chunk_and_timings_only() {
        // older llama.cpp build: usage and timings on the finish chunk itself, CRLF line ends
        let body = concat!(
            "data: {\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\r\n\r\n",
            "data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"timings\":{\"prompt_n\":7,\"prompt_ms\":1.5,\"predicted_n\":1,\"predicted_ms\":2.0,\"predicted_per_second\":500.0}}\r\n\r\n",
            "data: [DONE]\r\n\r\n",
        );
        let r = run(Api::Openai, body.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.text, "hi");
        assert_eq!(r.stats.done_reason.as_deref(), Some("stop"));
        assert_eq!(r.stats.output_tokens, Some(1));
        assert_eq!(r.stats.prompt_tokens, Some(7));
        assert_eq!(r.stats.eval_ms, Some(2.0));
    }

    #[test]
    fn sse_missing_done_is_a_cut() {
        let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n";
        let r = run(Api::Openai, body.as_bytes(), &[]);
        assert_eq!(r.text, "hi");
        assert!(matches!(r.error, Some(StreamError::Cut(ref m)) if m.contains("[DONE]")), "{:?}", r.error);
        // [DONE] without the closing blank line still ends the stream
        let r = run(Api::Openai, b"data: [DONE]", &[]);
        assert_eq!(r.error, None);
    }

    #[test]
    fn sse_error_event_and_bad_lines() {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
            "data: {\"error\":{\"code\":500,\"message\":\"llama-server process has terminated: exit status 2\",\"type\":\"server_error\"}}\n\n",
        );
        let r = run(Api::Openai, body.as_bytes(), &[]);
        assert_eq!(r.error, Some(StreamError::Server("llama-server process has terminated: exit status 2".into())));
        let r = run(Api::Openai, b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}\n\n", &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(ref m)) if m.contains("bad SSE data")));
        let r = run(Api::Openai, b"{\"choices\":[]}\n\n", &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(ref m)) if m.contains("not an SSE line")));
        // an unused SSE field and multi-line data are legal
        let body =
            "event: message\nid: 3\ndata: {\"choices\":\ndata: [{\"delta\":{\"content\":\"z\"}}]}\n\ndata:[DONE]\n\n";
        let r = run(Api::Openai, body.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.text, "z");
    }

    #[test]
    fn one_clock_read_per_complete_message() {
        let mut reads = 0u32;
        let mut clock = || {
            reads += 1;
            reads
        };
        let mut s: TimedStream<u32> = TimedStream::new(Api::Ollama);
        // two messages and a blank line in one read, a third split over two reads
        let first = "{\"message\":{\"content\":\"a\"}}\n\n{\"message\":{\"content\":\"\"}}\n{\"message\":{\"con";
        assert_eq!(s.read(first.as_bytes(), &mut clock).unwrap(), Progress::More);
        // read 1 stamps "a"; the blank line is no message; read 2 is the empty-text message
        assert_eq!(s.stamps, vec![1]);
        let second = "tent\":\"b\"}}\n{\"done\":true}\n{\"message\":{\"content\":\"late\"}}\n";
        assert_eq!(s.read(second.as_bytes(), &mut clock).unwrap(), Progress::Done);
        assert_eq!(s.stamps, vec![1, 3], "each message its own read of the clock, when it was complete");
        assert_eq!(s.texts().collect::<Vec<_>>(), vec!["a", "b"]);
        let (stamps, text, stats) = s.into_parts();
        assert_eq!((stamps.len(), text.as_str(), stats.output_tokens), (2, "ab", Some(0)));
        assert_eq!(reads, 4, "nothing after the done line is read");

        let mut t = 0u32;
        let mut clock = || {
            t += 10;
            t
        };
        let mut s: TimedStream<u32> = TimedStream::new(Api::Openai);
        s.read(b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n", &mut clock).unwrap();
        assert!(s.stamps.is_empty(), "an SSE event is complete at its blank line");
        s.read(b"\ndata: {\"choices\":[{\"delta\":{\"content\":\"y\"}}]}", &mut clock).unwrap();
        s.end(&mut clock).unwrap_err(); // no [DONE]
        assert_eq!(s.stamps, vec![10, 20], "the end of the body completes the last event");
        assert_eq!(s.texts().collect::<Vec<_>>(), vec!["x", "y"]);
    }

    #[test]
    fn data_after_terminal_event_is_ignored() {
        let body = format!("{OLLAMA}garbage that would not parse\n");
        let r = run(Api::Ollama, body.as_bytes(), &[]);
        assert_eq!(r.error, None);
        assert_eq!(r.reads_until_done, Some(1));
    }

    #[test]
    fn plain_text_is_borrowed_not_copied() {
        let c: OllamaChunk = serde_json::from_slice(br#"{"message":{"content":"abc"},"done":false}"#).unwrap();
        assert!(matches!(c.message.unwrap().content.unwrap().0, Cow::Borrowed("abc")));
        let c: OllamaChunk = serde_json::from_slice(br#"{"message":{"content":"a\nb"},"done":false}"#).unwrap();
        assert!(matches!(c.message.unwrap().content.unwrap().0, Cow::Owned(ref s) if s == "a\nb"));
        let c: OpenAiChunk =
            serde_json::from_slice(br#"{"choices":[{"delta":{"content":"xy"}},{"delta":{"content":"skipped"}}]}"#)
                .unwrap();
        assert!(matches!(c.choices.0.unwrap().delta.unwrap().content.unwrap().0, Cow::Borrowed("xy")));
        let c: OpenAiChunk = serde_json::from_slice(br#"{"choices":null}"#).unwrap();
        assert!(c.choices.0.is_none());
    }

    #[test]
    fn a_line_over_the_limit_is_malformed_whole_or_in_reads() {
        let message = |len: usize| {
            let mut line = br#"{"message":{"content":"x"},"done":true}"#.to_vec();
            line.resize(len, b' '); // JSON may end in spaces
            line.push(b'\n');
            line
        };
        let at_limit = message(MAX_LINE_BYTES);
        assert_eq!(run(Api::Ollama, &at_limit, &[]).error, None, "a line of exactly the limit is read");
        assert_eq!(run(Api::Ollama, &at_limit, &[1000, 700_000]).error, None);
        let over = message(MAX_LINE_BYTES + 1);
        for cuts in [&[][..], &[10][..], &[1000, MAX_LINE_BYTES][..]] {
            let r = run(Api::Ollama, &over, cuts);
            assert!(matches!(r.error, Some(StreamError::Malformed(ref m)) if m.contains("longer than")), "{cuts:?}");
        }
        // refused as soon as the limit is passed: a line without end in reads of 64 KiB
        let mut p = StreamParser::new(Api::Ollama);
        let read = vec![b'x'; 65_536];
        let mut reads = 0;
        let err = loop {
            reads += 1;
            match p.feed(&read, &mut || (), &mut |_, _| {}) {
                Ok(_) => assert!(reads <= 16),
                Err(e) => break e,
            }
        };
        assert_eq!(reads, 17, "the read that passes 1 MiB is refused: {err}");
        assert!(p.line.capacity() <= 2 * MAX_LINE_BYTES, "the buffer stays bounded");
    }

    #[test]
    fn an_sse_event_over_the_limit_is_malformed() {
        let mut body = Vec::new();
        for _ in 0..20 {
            body.extend_from_slice(b"data: ");
            body.extend_from_slice(&vec![b'a'; 60_000]);
            body.push(b'\n');
        }
        let r = run(Api::Openai, &body, &[]);
        assert!(matches!(r.error, Some(StreamError::Malformed(ref m)) if m.contains("SSE event")), "{:?}", r.error);
    }

    #[test]
    fn error_bodies() {
        assert_eq!(error_body_message(br#"{"error":"model 'x' not found"}"#), "model 'x' not found");
        assert_eq!(
            error_body_message(br#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#),
            "Loading model"
        );
        assert_eq!(error_body_message(b"  Bad Gateway \n"), "Bad Gateway");
        assert_eq!(error_body_message(b""), "(empty body)");
        assert_eq!(error_body_message(br#"{"error":{"code":1}}"#), r#"{"code":1}"#);
    }
}
