//! The few Python string operations Salt's matchers apply to ids, grains and pillar: `str()`,
//! `str.lower()`, `str.split()`. Each returns `None` where brine cannot be sure to produce
//! Python's exact result (the caller then says "cannot tell" rather than guess).

use crate::value::Value;

/// Python's `str.isspace()` set (characters with bidirectional type WS, B or S, or category
/// Zs), which `str.split()` splits on and Unicode `\s` matches.
pub fn py_isspace(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..='\u{20}'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `s.split()`: runs of whitespace separate words; leading and trailing whitespace is dropped.
pub fn py_split(s: &str) -> Vec<&str> {
    s.split(py_isspace).filter(|w| !w.is_empty()).collect()
}

/// Characters whose lower-case mapping is the same in every Unicode version Python 3.10+ and
/// Rust use (Latin, Greek, Cyrillic, Armenian: below U+0530). Beyond them a mapping may have
/// been added after the minion's Python was built.
fn case_stable(c: char) -> bool {
    c < '\u{530}'
}

/// `s.lower()`, when brine can be sure of Python's answer.
pub(super) fn py_lower(s: &str) -> Option<String> {
    if s.is_ascii() {
        return Some(s.to_ascii_lowercase());
    }
    s.chars().all(case_stable).then(|| s.to_lowercase())
}

/// `str(v)` of a value as Salt's minion holds it (msgpack decoded with `raw=False`).
pub(super) fn py_str(v: &Value) -> Option<String> {
    match v {
        Value::Str(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        other => py_repr(other),
    }
}

/// `repr(v)`.
pub(super) fn py_repr(v: &Value) -> Option<String> {
    Some(match v {
        Value::Nil => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::F32(f) => py_float_repr(f64::from(*f)),
        Value::F64(f) => py_float_repr(*f),
        Value::Str(b) => str_repr(std::str::from_utf8(b).ok()?)?,
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items.iter().map(py_repr).collect();
            format!("[{}]", parts?.join(", "))
        }
        Value::Map(_) => {
            let entries = py_dict(v)?;
            let mut parts = Vec::with_capacity(entries.len());
            for (k, val) in entries {
                parts.push(format!("{}: {}", str_repr(k)?, py_repr(val)?));
            }
            format!("{{{}}}", parts.join(", "))
        }
        Value::Bin(_) | Value::Ext(..) => return None,
    })
}

/// A map as the Python dict msgpack decodes it into: string keys only (others are refused),
/// a repeated key keeps its first position and its last value.
pub(super) fn py_dict(v: &Value) -> Option<Vec<(&str, &Value)>> {
    let m = v.as_map()?;
    let mut out: Vec<(&str, &Value)> = Vec::with_capacity(m.len());
    for (k, val) in m {
        let Value::Str(b) = k else { return None };
        let k = std::str::from_utf8(b).ok()?;
        match out.iter_mut().find(|(have, _)| *have == k) {
            Some(slot) => slot.1 = val,
            None => out.push((k, val)),
        }
    }
    Some(out)
}

/// `repr()` of a str, for printable ASCII and the escapes Python uses for the rest of ASCII.
fn str_repr(s: &str) -> Option<String> {
    if !s.is_ascii() {
        // `str.isprintable()` beyond ASCII depends on the minion's Unicode database.
        return None;
    }
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (' '..='~').contains(&c) => out.push(c),
            c => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    out.push(quote);
    Some(out)
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional when the decimal
/// exponent is in -4..16, scientific (`1e+16`, `1.5e-05`) otherwise.
pub(super) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: `-1.2345e-5`.
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
        } else {
            let p = point as usize;
            if digits.len() <= p {
                format!("{digits}{}.0", "0".repeat(p - digits.len()))
            } else {
                format!("{}.{}", &digits[..p], &digits[p..])
            }
        };
        format!("{sign}{body}")
    } else {
        let mant = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{esign}{:02}", exp.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_repr() {
        for (f, want) in [
            (1.5, "1.5"),
            (2.0, "2.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123_456_789_012_345.6, "123456789012345.6"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
            (f64::NAN, "nan"),
        ] {
            assert_eq!(py_float_repr(f), want);
        }
    }

    #[test]
    fn str_and_repr_as_python() {
        let v = Value::map()
            .with("a", "x'y")
            .with(
                "b",
                Value::Array(vec![Value::Nil, Value::Bool(true), Value::Int(-3)]),
            )
            .with("c", 1.25f64);
        assert_eq!(
            py_str(&v).unwrap(),
            "{'a': \"x'y\", 'b': [None, True, -3], 'c': 1.25}"
        );
        assert_eq!(py_str(&Value::str("it's")).unwrap(), "it's");
        assert_eq!(py_repr(&Value::str("a\nb\u{1}")).unwrap(), "'a\\nb\\x01'");
        assert_eq!(py_repr(&Value::str("é")), None);
        assert_eq!(py_lower("ÀΣ"), Some("àς".into()));
        assert_eq!(py_lower("Ⰰ"), None);
        assert_eq!(py_split(" a\u{1c}b\u{a0} c "), ["a", "b", "c"]);
    }
}
