//! msgpack [`Value`] ⇄ JSON, for the job cache, the HTTP API and events.
//!
//! Byte strings that are not UTF-8 become lossy text; map keys that are not strings are
//! rendered as JSON text of the key (Python's json would fail; Salt's API does the same
//! coercion through `str()`).

use brine_proto::Value;
use serde_json::Value as Json;

/// `v` as JSON.
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Uint(u) => Json::from(*u),
        Value::F32(f) => {
            serde_json::Number::from_f64(f64::from(*f)).map_or(Json::Null, Json::Number)
        }
        Value::F64(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(b) | Value::Bin(b) => Json::String(String::from_utf8_lossy(b).into_owned()),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(b) | Value::Bin(b) => String::from_utf8_lossy(b).into_owned(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Ext(_, _) => Json::Null,
    }
}

/// JSON as a msgpack [`Value`].
pub fn from_json(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::from_u64))
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => Value::str(s),
        Json::Array(a) => Value::Array(a.iter().map(from_json).collect()),
        Json::Object(m) => Value::Map(
            m.iter()
                .map(|(k, v)| (Value::str(k), from_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = Value::map()
            .with(
                "a",
                Value::Array(vec![Value::Int(1), Value::Bool(true), Value::Nil]),
            )
            .with("s", "text")
            .with("f", Value::F64(1.5));
        assert_eq!(from_json(&to_json(&v)), v);
        let odd = Value::Map(vec![(Value::Int(3), Value::bin(vec![0xff]))]);
        assert_eq!(to_json(&odd), serde_json::json!({"3": "\u{fffd}"}));
    }
}
