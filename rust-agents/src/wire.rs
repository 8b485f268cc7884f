//! The one spelling of an enum: serde's (`rename_all` on the enum), used alike for the JSON the
//! agent writes, the prompt-nonce key, map lookups and messages, so no hand-written name table
//! can drift from what the JSON says.

use serde::Serialize;

/// The name serde writes for a unit variant, e.g. `Phase::Alone` → "alone".
pub fn wire_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => panic!("wire_name is for unit enum variants, got {other:?}"),
    }
}

/// `Display` as the wire name, for enums that derive `Serialize` with a `rename_all`.
#[macro_export]
macro_rules! display_as_wire_name {
    ($($t:ty),+ $(,)?) => {
        $(impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&$crate::wire::wire_name(self))
            }
        })+
    };
}
