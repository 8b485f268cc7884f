//! metrics.schema.json, checked with the `jsonschema` crate (draft 2020-12) that the agent itself
//! uses for job files, so the Rust tests hold a written document to the same schema as Python.

use serde_json::Value;

pub struct Schema {
    validator: jsonschema::Validator,
}

impl Schema {
    pub fn load() -> Schema {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/data/metrics.schema.json");
        let text = std::fs::read_to_string(&path).expect("metrics.schema.json");
        let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
        Schema { validator: jsonschema::draft202012::new(&schema).expect("metrics.schema.json compiles") }
    }

    /// All violations, as "path: message".
    pub fn errors(&self, doc: &Value) -> Vec<String> {
        self.validator.iter_errors(doc).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
    }

    pub fn assert_valid(&self, doc: &Value) {
        let errors = self.errors(doc);
        assert!(errors.is_empty(), "metrics.json violates the schema:\n{}", errors.join("\n"));
    }
}
