//! A small JSON Schema (draft 2020-12) checker for the keywords metrics.schema.json uses. Any
//! other keyword makes it panic, so it never passes a document by ignoring part of the schema.

use serde_json::Value;

pub struct Schema {
    root: Value,
}

impl Schema {
    pub fn load() -> Schema {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data/metrics.schema.json");
        let text = std::fs::read_to_string(&path).expect("metrics.schema.json");
        Schema { root: serde_json::from_str(&text).expect("schema is JSON") }
    }

    /// All violations, as "path: message".
    pub fn errors(&self, doc: &Value) -> Vec<String> {
        let mut out = Vec::new();
        self.check(&self.root, doc, "$", &mut out);
        out
    }

    pub fn assert_valid(&self, doc: &Value) {
        let errors = self.errors(doc);
        assert!(errors.is_empty(), "metrics.json violates the schema:\n{}", errors.join("\n"));
    }

    fn resolve<'a>(&'a self, reference: &str) -> &'a Value {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("non-local $ref {reference}"));
        self.root.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {reference}"))
    }

    fn check(&self, schema: &Value, v: &Value, path: &str, out: &mut Vec<String>) {
        let Some(obj) = schema.as_object() else {
            if schema == &Value::Bool(false) {
                out.push(format!("{path}: not allowed"));
            }
            return;
        };
        for (key, kw) in obj {
            match key.as_str() {
                "$schema" | "$id" | "title" | "description" | "$defs" => {}
                "$ref" => self.check(self.resolve(kw.as_str().unwrap()), v, path, out),
                "type" => {
                    let types: Vec<&str> = match kw {
                        Value::String(s) => vec![s.as_str()],
                        Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
                        _ => panic!("bad type keyword"),
                    };
                    if !types.iter().any(|t| type_ok(t, v)) {
                        out.push(format!("{path}: {v} is not of type {types:?}"));
                    }
                }
                "const" => {
                    if kw != v {
                        out.push(format!("{path}: {v} != const {kw}"));
                    }
                }
                "enum" => {
                    if !kw.as_array().unwrap().contains(v) {
                        out.push(format!("{path}: {v} not in enum {kw}"));
                    }
                }
                "required" => {
                    if let Some(o) = v.as_object() {
                        for k in kw.as_array().unwrap() {
                            if !o.contains_key(k.as_str().unwrap()) {
                                out.push(format!("{path}: missing required {k}"));
                            }
                        }
                    }
                }
                "properties" => {
                    if let Some(o) = v.as_object() {
                        for (k, sub) in kw.as_object().unwrap() {
                            if let Some(child) = o.get(k) {
                                self.check(sub, child, &format!("{path}.{k}"), out);
                            }
                        }
                    }
                }
                "additionalProperties" => {
                    if let Some(o) = v.as_object() {
                        let known = obj.get("properties").and_then(Value::as_object);
                        for (k, child) in o {
                            if known.is_some_and(|p| p.contains_key(k)) {
                                continue;
                            }
                            match kw {
                                Value::Bool(false) => out.push(format!("{path}: additional property {k:?}")),
                                Value::Bool(true) => {}
                                sub => self.check(sub, child, &format!("{path}.{k}"), out),
                            }
                        }
                    }
                }
                "items" => {
                    if let Some(a) = v.as_array() {
                        for (i, child) in a.iter().enumerate() {
                            self.check(kw, child, &format!("{path}[{i}]"), out);
                        }
                    }
                }
                "minItems" => {
                    if let Some(a) = v.as_array() {
                        if (a.len() as u64) < kw.as_u64().unwrap() {
                            out.push(format!("{path}: fewer than {kw} items"));
                        }
                    }
                }
                "minLength" => {
                    if let Some(s) = v.as_str() {
                        if (s.chars().count() as u64) < kw.as_u64().unwrap() {
                            out.push(format!("{path}: shorter than {kw}"));
                        }
                    }
                }
                "minimum" => {
                    if let Some(n) = v.as_f64() {
                        if n < kw.as_f64().unwrap() {
                            out.push(format!("{path}: {n} < minimum {kw}"));
                        }
                    }
                }
                "exclusiveMinimum" => {
                    if let Some(n) = v.as_f64() {
                        if n <= kw.as_f64().unwrap() {
                            out.push(format!("{path}: {n} ≤ exclusiveMinimum {kw}"));
                        }
                    }
                }
                "pattern" => {
                    if let Some(s) = v.as_str() {
                        if !pattern_ok(kw.as_str().unwrap(), s) {
                            out.push(format!("{path}: {s:?} does not match {kw}"));
                        }
                    }
                }
                "format" => {
                    if let Some(s) = v.as_str() {
                        assert_eq!(kw, "date-time", "unsupported format {kw}");
                        if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                            out.push(format!("{path}: {s:?} is not an RFC 3339 date-time"));
                        }
                    }
                }
                "oneOf" => {
                    let passing = kw
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|sub| {
                            let mut e = Vec::new();
                            self.check(sub, v, path, &mut e);
                            e.is_empty()
                        })
                        .count();
                    if passing != 1 {
                        out.push(format!("{path}: matches {passing} of oneOf, not exactly 1"));
                    }
                }
                other => panic!("schema keyword {other:?} is not supported by this checker"),
            }
        }
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Patterns of the form `^[class]+$` or `^[class]{n}$`, where class holds single characters
/// and `a-z` ranges. Anything else panics.
fn pattern_ok(pattern: &str, s: &str) -> bool {
    let inner = pattern.strip_prefix("^[").unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let (class, quant) = inner.split_once(']').unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let quant = quant.strip_suffix('$').unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    let chars: Vec<char> = class.chars().collect();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i + 2 < chars.len() && chars[i + 1] == '-' {
            ranges.push((chars[i], chars[i + 2]));
            i += 3;
        } else {
            ranges.push((chars[i], chars[i]));
            i += 1;
        }
    }
    let in_class = |c: char| ranges.iter().any(|&(a, b)| a <= c && c <= b);
    let all = s.chars().all(in_class);
    let n = s.chars().count();
    match quant {
        "+" => all && n >= 1,
        q if q.starts_with('{') && q.ends_with('}') => all && n == q[1..q.len() - 1].parse::<usize>().unwrap(),
        _ => panic!("unsupported pattern {pattern}"),
    }
}

#[test]
fn checker_catches_violations() {
    let schema = Schema::load();
    let errors = schema.errors(&serde_json::json!({"schema_version": 2, "lang": "go", "extra": 1}));
    let text = errors.join("\n");
    assert!(text.contains("const"), "{text}");
    assert!(text.contains("enum"), "{text}");
    assert!(text.contains("additional property \"extra\""), "{text}");
    assert!(text.contains("missing required \"requests\""), "{text}");
    assert!(pattern_ok("^[a-z0-9._-]+$", "gemma3-270m"));
    assert!(!pattern_ok("^[a-z0-9._-]+$", "Gemma"));
    assert!(pattern_ok("^[0-9a-f]{64}$", &"a".repeat(64)));
    assert!(!pattern_ok("^[0-9a-f]{64}$", &"a".repeat(63)));
}
