//! [`Value`]: a msgpack value as Salt uses it.
//!
//! Salt does not distinguish text from bytes on receive (it UTF-8-decodes whatever it can), so
//! strings are kept as raw bytes and converted lazily. Maps keep their order and may have
//! non-string keys, as Salt's do.

use std::fmt;

/// One msgpack value. Maps are ordered lists of entries.
#[derive(Clone, PartialEq)]
pub enum Value {
    /// `nil` / Python `None`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// Any integer that fits `i64` (most do).
    Int(i64),
    /// An unsigned integer above `i64::MAX`. [`Value::from_u64`] picks the right variant.
    Uint(u64),
    /// A 32-bit float (Salt never writes these, but decodes them).
    F32(f32),
    /// A 64-bit float (Python `float`).
    F64(f64),
    /// The msgpack str family: text, or on Salt's wire any byte string.
    Str(Vec<u8>),
    /// The msgpack bin family. Written as str on Salt's wire, as bin in modern mode.
    Bin(Vec<u8>),
    /// An array (Python list, tuple or set).
    Array(Vec<Self>),
    /// A map, in wire order.
    Map(Vec<(Self, Self)>),
    /// An extension value: Salt uses 78 for datetimes and 79 for constants.
    Ext(i8, Vec<u8>),
}

impl Value {
    /// A text value.
    pub fn str(s: impl AsRef<str>) -> Self {
        Self::Str(s.as_ref().as_bytes().to_vec())
    }

    /// A byte-string value (ciphertexts, signatures).
    pub fn bin(b: impl Into<Vec<u8>>) -> Self {
        Self::Bin(b.into())
    }

    /// The right integer variant for `u`.
    pub fn from_u64(u: u64) -> Self {
        match i64::try_from(u) {
            Ok(i) => Self::Int(i),
            Err(_) => Self::Uint(u),
        }
    }

    /// An empty map.
    pub fn map() -> Self {
        Self::Map(Vec::new())
    }

    /// Builder: append `key: value` to a map (no-op on other variants).
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<Self>) -> Self {
        self.insert(key, value);
        self
    }

    /// Set `key` in a map: replaces an existing entry in place, else appends.
    pub fn insert(&mut self, key: &str, value: impl Into<Self>) {
        if let Self::Map(entries) = self {
            let value = value.into();
            if let Some(slot) = entries.iter_mut().find(|(k, _)| k.is_str(key)) {
                slot.1 = value;
            } else {
                entries.push((Self::str(key), value));
            }
        }
    }

    /// Remove `key` from a map, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<Self> {
        if let Self::Map(entries) = self {
            let i = entries.iter().position(|(k, _)| k.is_str(key))?;
            return Some(entries.remove(i).1);
        }
        None
    }

    /// Look `key` up in a map.
    pub fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Map(entries) => entries.iter().find(|(k, _)| k.is_str(key)).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Whether this is a str or bin equal to `s`.
    pub fn is_str(&self, s: &str) -> bool {
        self.as_bytes() == Some(s.as_bytes())
    }

    /// The bytes of a str or bin.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Str(b) | Self::Bin(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a str or bin that is valid UTF-8 (as Salt's `decode_embedded_strs` would).
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// An integer that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of an array.
    pub fn as_array(&self) -> Option<&[Self]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The strings of an array (other items skipped); empty for anything but an array.
    pub fn str_items(&self) -> Vec<String> {
        self.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Self::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The entries of a map.
    pub fn as_map(&self) -> Option<&[(Self, Self)]> {
        match self {
            Self::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is `nil`.
    pub fn is_nil(&self) -> bool {
        matches!(self, Self::Nil)
    }

    /// Python truthiness, as Salt's `if value:` checks see it.
    pub fn is_truthy(&self) -> bool {
        match self {
            Self::Nil => false,
            Self::Bool(b) => *b,
            Self::Int(i) => *i != 0,
            Self::Uint(_) => true,
            Self::F32(f) => *f != 0.0,
            Self::F64(f) => *f != 0.0,
            Self::Str(b) | Self::Bin(b) | Self::Ext(_, b) => !b.is_empty(),
            Self::Array(a) => !a.is_empty(),
            Self::Map(m) => !m.is_empty(),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nil => f.write_str("nil"),
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}"),
            Self::F32(x) => write!(f, "{x}f32"),
            Self::F64(x) => write!(f, "{x}"),
            Self::Str(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "{s:?}"),
                Err(_) => write!(f, "str<{} bytes>", b.len()),
            },
            Self::Bin(b) => write!(f, "bin<{} bytes>", b.len()),
            Self::Array(a) => f.debug_list().entries(a).finish(),
            Self::Map(m) => f
                .debug_map()
                .entries(m.iter().map(|(k, v)| (k, v)))
                .finish(),
            Self::Ext(t, d) => write!(f, "ext({t}, {} bytes)", d.len()),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::str(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(s.into_bytes())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Self::str(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Int(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Self::Int(i64::from(i))
    }
}

impl From<u16> for Value {
    fn from(i: u16) -> Self {
        Self::Int(i64::from(i))
    }
}

impl From<u64> for Value {
    fn from(u: u64) -> Self {
        Self::from_u64(u)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Self::F64(f)
    }
}

impl From<Vec<Self>> for Value {
    fn from(a: Vec<Self>) -> Self {
        Self::Array(a)
    }
}

impl<T: Into<Self>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Self::Nil, Into::into)
    }
}
