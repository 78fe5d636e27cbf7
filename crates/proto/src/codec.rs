//! Salt's msgpack conventions, in one place.
//!
//! Salt packs the wire with `use_bin_type=False` (msgpack's "old spec"): every string *and* every
//! byte string is written in the str family (`a0`-`bf`, `da`, `db`), never `d9` (str8) and never
//! bin. Its IPC bus and job-cache files use `use_bin_type=True` instead ("modern" mode). This module
//! decodes either into [`Value`], which keeps str and bin apart and keeps map order, and encodes a
//! [`Value`] back in either mode so that re-encoding what Salt sent gives the same bytes.
//!
//! Decoding never trusts a length prefix: every length is checked against the bytes that are
//! actually there before anything is allocated, and nesting is capped at [`MAX_DEPTH`].

use crate::value::Value;

/// Deepest nesting of arrays and maps accepted by [`decode`]. Salt's own payloads nest a few
/// levels; grains and state returns stay well under 64.
pub const MAX_DEPTH: usize = 256;

/// The two ways Salt writes msgpack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `use_bin_type=False`: the ZeroMQ wire. Str and bin are both written as str, str8 is never
    /// used.
    Wire,
    /// `use_bin_type=True`: the event bus, job cache files, `minion_sign_messages` signatures.
    Modern,
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a value; more bytes are needed.
    #[error("msgpack input is incomplete (needs {needed} more bytes at offset {offset})")]
    Incomplete {
        /// Offset at which the value being read starts to run short.
        offset: usize,
        /// How many more bytes the value declared.
        needed: usize,
    },
    /// A marker byte that msgpack does not define (`0xc1`).
    #[error("invalid msgpack marker 0x{marker:02x} at offset {offset}")]
    InvalidMarker {
        /// The marker byte.
        marker: u8,
        /// Where it was found.
        offset: usize,
    },
    /// Arrays or maps nested deeper than [`MAX_DEPTH`].
    #[error("msgpack nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A complete value was followed by more bytes.
    #[error("{0} trailing bytes after the msgpack value")]
    TrailingBytes(usize),
}

/// Decode exactly one msgpack value that spans all of `input`.
///
/// # Errors
/// [`DecodeError::Incomplete`] if `input` ends early, [`DecodeError::TrailingBytes`] if it goes
/// on after the value, or another [`DecodeError`] for malformed input.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let (value, used) = decode_prefix(input)?;
    if used != input.len() {
        return Err(DecodeError::TrailingBytes(input.len() - used));
    }
    Ok(value)
}

/// Decode one msgpack value from the front of `input`, returning it and the bytes it used.
///
/// # Errors
/// As [`decode`], except that trailing bytes are allowed.
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut r = Reader { buf: input, pos: 0 };
    let v = r.value(0)?;
    Ok((v, r.pos))
}

/// Encode `value` in the given [`Mode`].
pub fn encode(value: &Value, mode: Mode) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(value, mode, &mut out);
    out
}

/// Encode `value` for Salt's ZeroMQ wire (`use_bin_type=False`).
pub fn encode_wire(value: &Value) -> Vec<u8> {
    encode(value, Mode::Wire)
}

/// Append the encoding of `value` to `out`.
pub fn encode_into(value: &Value, mode: Mode, out: &mut Vec<u8>) {
    match value {
        Value::Nil => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Int(i) => write_int(*i, out),
        Value::Uint(u) => write_uint(*u, out),
        Value::F32(f) => {
            out.push(0xca);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::F64(f) => {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => write_str(s, mode, out),
        Value::Bin(b) => match mode {
            Mode::Wire => write_str(b, mode, out),
            Mode::Modern => write_bin(b, out),
        },
        Value::Array(items) => {
            write_len(items.len(), 0x90, 0xdc, 0xdd, out);
            for item in items {
                encode_into(item, mode, out);
            }
        }
        Value::Map(entries) => {
            write_len(entries.len(), 0x80, 0xde, 0xdf, out);
            for (k, v) in entries {
                encode_into(k, mode, out);
                encode_into(v, mode, out);
            }
        }
        Value::Ext(tag, data) => write_ext(*tag, data, out),
    }
}

fn write_int(i: i64, out: &mut Vec<u8>) {
    if i >= 0 {
        return write_uint(i as u64, out);
    }
    if i >= -32 {
        out.push(i as i8 as u8);
    } else if i >= i64::from(i8::MIN) {
        out.push(0xd0);
        out.push(i as i8 as u8);
    } else if i >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

fn write_uint(u: u64, out: &mut Vec<u8>) {
    if u < 0x80 {
        out.push(u as u8);
    } else if u <= u64::from(u8::MAX) {
        out.push(0xcc);
        out.push(u as u8);
    } else if u <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(u as u16).to_be_bytes());
    } else if u <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(u as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&u.to_be_bytes());
    }
}

fn write_str(s: &[u8], mode: Mode, out: &mut Vec<u8>) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 && mode == Mode::Modern {
        out.push(0xd9);
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        // Salt's wire mode writes str16 (`da`) for 32..=255 bytes where modern msgpack would
        // write str8 (`d9`).
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

fn write_bin(b: &[u8], out: &mut Vec<u8>) {
    let n = b.len();
    if n < 256 {
        out.push(0xc4);
        out.push(n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

fn write_len(n: usize, fix: u8, m16: u8, m32: u8, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(fix | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(m16);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(m32);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

fn write_ext(tag: i8, data: &[u8], out: &mut Vec<u8>) {
    let fixed = match data.len() {
        1 => Some(0xd4),
        2 => Some(0xd5),
        4 => Some(0xd6),
        8 => Some(0xd7),
        16 => Some(0xd8),
        _ => None,
    };
    if let Some(marker) = fixed {
        out.push(marker);
    } else if data.len() < 256 {
        out.push(0xc7);
        out.push(data.len() as u8);
    } else if data.len() <= usize::from(u16::MAX) {
        out.push(0xc8);
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    } else {
        out.push(0xc9);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    }
    out.push(tag as u8);
    out.extend_from_slice(data);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let avail = self.buf.len() - self.pos;
        if n > avail {
            return Err(DecodeError::Incomplete {
                offset: self.pos,
                needed: n - avail,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn len16(&mut self) -> Result<usize, DecodeError> {
        Ok(usize::from(u16::from_be_bytes(self.be()?)))
    }

    fn len32(&mut self) -> Result<usize, DecodeError> {
        Ok(u32::from_be_bytes(self.be()?) as usize)
    }

    fn bytes(&mut self, n: usize) -> Result<Vec<u8>, DecodeError> {
        Ok(self.take(n)?.to_vec())
    }

    /// Checks that at least `n` more elements could possibly follow (each takes >= 1 byte), so a
    /// hostile length prefix cannot make us reserve memory for elements that are not there.
    fn plausible(&self, n: usize) -> Result<(), DecodeError> {
        let avail = self.buf.len() - self.pos;
        if n > avail {
            return Err(DecodeError::Incomplete {
                offset: self.pos,
                needed: n - avail,
            });
        }
        Ok(())
    }

    fn array(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.plausible(n)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize) -> Result<Value, DecodeError> {
        self.plausible(n.saturating_mul(2))?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }

    fn ext(&mut self, n: usize) -> Result<Value, DecodeError> {
        let tag = self.u8()? as i8;
        Ok(Value::Ext(tag, self.bytes(n)?))
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.pos;
        let m = self.u8()?;
        Ok(match m {
            0x00..=0x7f => Value::Int(i64::from(m)),
            0x80..=0x8f => return self.map(usize::from(m & 0x0f), depth),
            0x90..=0x9f => return self.array(usize::from(m & 0x0f), depth),
            0xa0..=0xbf => Value::Str(self.bytes(usize::from(m & 0x1f))?),
            0xc0 => Value::Nil,
            0xc1 => {
                return Err(DecodeError::InvalidMarker {
                    marker: m,
                    offset: at,
                });
            }
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = usize::from(self.u8()?);
                Value::Bin(self.bytes(n)?)
            }
            0xc5 => {
                let n = self.len16()?;
                Value::Bin(self.bytes(n)?)
            }
            0xc6 => {
                let n = self.len32()?;
                Value::Bin(self.bytes(n)?)
            }
            0xc7 => {
                let n = usize::from(self.u8()?);
                return self.ext(n);
            }
            0xc8 => {
                let n = self.len16()?;
                return self.ext(n);
            }
            0xc9 => {
                let n = self.len32()?;
                return self.ext(n);
            }
            0xca => Value::F32(f32::from_be_bytes(self.be()?)),
            0xcb => Value::F64(f64::from_be_bytes(self.be()?)),
            0xcc => Value::Int(i64::from(self.u8()?)),
            0xcd => Value::Int(i64::from(u16::from_be_bytes(self.be()?))),
            0xce => Value::Int(i64::from(u32::from_be_bytes(self.be()?))),
            0xcf => Value::from_u64(u64::from_be_bytes(self.be()?)),
            0xd0 => Value::Int(i64::from(self.u8()? as i8)),
            0xd1 => Value::Int(i64::from(i16::from_be_bytes(self.be()?))),
            0xd2 => Value::Int(i64::from(i32::from_be_bytes(self.be()?))),
            0xd3 => Value::Int(i64::from_be_bytes(self.be()?)),
            0xd4 => return self.ext(1),
            0xd5 => return self.ext(2),
            0xd6 => return self.ext(4),
            0xd7 => return self.ext(8),
            0xd8 => return self.ext(16),
            0xd9 => {
                let n = usize::from(self.u8()?);
                Value::Str(self.bytes(n)?)
            }
            0xda => {
                let n = self.len16()?;
                Value::Str(self.bytes(n)?)
            }
            0xdb => {
                let n = self.len32()?;
                Value::Str(self.bytes(n)?)
            }
            0xdc => {
                let n = self.len16()?;
                return self.array(n, depth);
            }
            0xdd => {
                let n = self.len32()?;
                return self.array(n, depth);
            }
            0xde => {
                let n = self.len16()?;
                return self.map(n, depth);
            }
            0xdf => {
                let n = self.len32()?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Value::Int(i64::from(m as i8)),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wire_strings_use_str16_not_str8() {
        let s = Value::str("0123456789abcdef0123456789abcdef");
        let bytes = encode_wire(&s);
        assert_eq!(&bytes[..3], &[0xda, 0x00, 0x20]);
        assert_eq!(encode(&s, Mode::Modern)[..2], [0xd9, 0x20]);
    }

    #[test]
    fn wire_writes_bytes_as_str() {
        let b = Value::Bin(vec![0xff, 0xfe]);
        assert_eq!(encode_wire(&b), vec![0xa2, 0xff, 0xfe]);
        assert_eq!(encode(&b, Mode::Modern), vec![0xc4, 0x02, 0xff, 0xfe]);
    }

    #[test]
    fn integers_use_smallest_form() {
        for (v, want) in [
            (0i64, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0xcc, 0x80]),
            (14505, vec![0xcd, 0x38, 0xa9]),
            (-1, vec![0xff]),
            (-33, vec![0xd0, 0xdf]),
            (1_795_744_611, vec![0xce, 0x6b, 0x08, 0xe3, 0x63]),
        ] {
            assert_eq!(encode_wire(&Value::Int(v)), want, "{v}");
        }
    }

    #[test]
    fn hostile_lengths_are_incomplete_not_allocations() {
        // A str32 claiming 4 GiB, an array32 claiming 4 billion elements, a map32 likewise.
        for input in [
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'][..],
            &[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01],
            &[0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x01],
        ] {
            assert!(matches!(decode(input), Err(DecodeError::Incomplete { .. })));
        }
    }

    #[test]
    fn nesting_is_capped() {
        let deep = vec![0x91u8; MAX_DEPTH + 2];
        assert_eq!(decode(&deep), Err(DecodeError::TooDeep));
    }

    #[test]
    fn c1_is_rejected_and_trailing_bytes_reported() {
        assert!(matches!(
            decode(&[0xc1]),
            Err(DecodeError::InvalidMarker { marker: 0xc1, .. })
        ));
        assert_eq!(decode(&[0x01, 0x02]), Err(DecodeError::TrailingBytes(1)));
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Value::Uint),
            any::<f64>()
                .prop_filter("nan", |f| !f.is_nan())
                .prop_map(Value::F64),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Value::Str),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(t, d)| Value::Ext(t, d)),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
            ]
        })
    }

    proptest! {
        #[test]
        fn wire_round_trip_is_byte_exact(v in arb_value()) {
            let bytes = encode_wire(&v);
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(encode_wire(&back), bytes);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
