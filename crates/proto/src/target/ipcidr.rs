//! `ipcidr` targets (`S@`), as Salt's `ipcidr_match` evaluates them with Python's `ipaddress`:
//! the target is an address (`str(addr) in grains[ipvN]`) or a strict network (host bits clear;
//! `in_subnet` over the grain's addresses); anything else is "invalid", which Salt's matcher
//! answers with `[]` (false, and `not S@...` true). Forms whose parsing or printing differs
//! between Python versions (scope ids, IPv4 inside IPv6, netmask suffixes) are not guessed.

use super::pystr::py_dict;
use crate::value::Value;

/// What `ipcidr_match.match` does for one minion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// It returns this truth value.
    Is(bool),
    /// It raises (the minion's whole match fails).
    Raises,
    /// brine cannot tell.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Addr {
    V4(u32),
    V6(u128),
}

impl Addr {
    fn version(self) -> u8 {
        match self {
            Self::V4(_) => 4,
            Self::V6(_) => 6,
        }
    }

    fn int(self) -> u128 {
        match self {
            Self::V4(a) => u128::from(a),
            Self::V6(a) => a,
        }
    }

    /// `str(addr)`.
    fn to_py_string(self) -> Option<String> {
        match self {
            Self::V4(a) => Some(std::net::Ipv4Addr::from(a).to_string()),
            Self::V6(a) => {
                // IPv4-mapped addresses print differently from Python 3.13 on.
                if a >> 32 == 0xffff {
                    return None;
                }
                Some(compress_hextets(a))
            }
        }
    }
}

/// Python's IPv6 `__str__`: lower-case hex groups, the longest run (2+) of zero groups
/// (the first, on ties) replaced by `::`.
fn compress_hextets(a: u128) -> String {
    let groups: Vec<u16> = (0..8).map(|i| (a >> (112 - 16 * i)) as u16).collect();
    let (mut best, mut best_len, mut cur, mut cur_len) = (None, 0, 0, 0);
    for (i, g) in groups.iter().enumerate() {
        if *g == 0 {
            if cur_len == 0 {
                cur = i;
            }
            cur_len += 1;
            if cur_len > best_len {
                best = Some(cur);
                best_len = cur_len;
            }
        } else {
            cur_len = 0;
        }
    }
    let hex: Vec<String> = groups.iter().map(|g| format!("{g:x}")).collect();
    match best {
        Some(start) if best_len > 1 => {
            let head = hex[..start].join(":");
            let tail = hex[start + best_len..].join(":");
            format!("{head}::{tail}")
        }
        _ => hex.join(":"),
    }
}

/// A Python parse: an address, "Python refuses it", or "brine cannot tell".
enum Parsed<T> {
    Ok(T),
    Invalid,
    Unknown,
}

fn parse_v4(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut v = 0u32;
    for p in parts {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p != "0" && p.starts_with('0') {
            return None;
        }
        let o: u32 = p.parse().ok()?;
        if o > 255 {
            return None;
        }
        v = (v << 8) | o;
    }
    Some(v)
}

fn parse_v6(s: &str) -> Parsed<u128> {
    if s.contains('%') {
        // Scope ids: not evaluated.
        return Parsed::Unknown;
    }
    if s.is_empty() || s.contains('/') {
        return Parsed::Invalid;
    }
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() < 3 {
        return Parsed::Invalid;
    }
    if parts[parts.len() - 1].contains('.') {
        // Embedded IPv4: not evaluated.
        return Parsed::Unknown;
    }
    if parts.len() > 9 {
        return Parsed::Invalid;
    }
    let mut skip = None;
    for (i, p) in parts.iter().enumerate().take(parts.len() - 1).skip(1) {
        if p.is_empty() {
            if skip.is_some() {
                return Parsed::Invalid;
            }
            skip = Some(i);
        }
    }
    let (hi, lo, skipped) = if let Some(at) = skip {
        let mut hi = at;
        let mut lo = parts.len() - at - 1;
        if parts[0].is_empty() {
            if hi != 1 {
                return Parsed::Invalid;
            }
            hi -= 1;
        }
        if parts[parts.len() - 1].is_empty() {
            if lo != 1 {
                return Parsed::Invalid;
            }
            lo -= 1;
        }
        let skipped = 8usize.checked_sub(hi + lo).filter(|s| *s >= 1);
        let Some(skipped) = skipped else {
            return Parsed::Invalid;
        };
        (hi, lo, skipped)
    } else {
        if parts.len() != 8 || parts[0].is_empty() || parts[7].is_empty() {
            return Parsed::Invalid;
        }
        (8, 0, 0)
    };
    let hextet = |p: &str| -> Option<u128> {
        if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(p, 16).ok()
    };
    let mut v = 0u128;
    for p in &parts[..hi] {
        let Some(h) = hextet(p) else {
            return Parsed::Invalid;
        };
        v = (v << 16) | h;
    }
    // `::` alone skips all eight groups: a shift by the whole width.
    v = v.checked_shl(16 * skipped as u32).unwrap_or(0);
    for p in &parts[parts.len() - lo..] {
        let Some(h) = hextet(p) else {
            return Parsed::Invalid;
        };
        v = (v << 16) | h;
    }
    Parsed::Ok(v)
}

/// `ipaddress.ip_address(s)`.
fn ip_address(s: &str) -> Parsed<Addr> {
    if let Some(a) = parse_v4(s) {
        return Parsed::Ok(Addr::V4(a));
    }
    match parse_v6(s) {
        Parsed::Ok(a) => Parsed::Ok(Addr::V6(a)),
        Parsed::Invalid => Parsed::Invalid,
        Parsed::Unknown => Parsed::Unknown,
    }
}

/// `ipaddress.ip_network(s)` (strict): the network address and prefix length.
fn ip_network(s: &str) -> Parsed<(Addr, u32)> {
    let mut split = s.split('/');
    let addr = split.next().unwrap_or("");
    let prefix = split.next();
    if split.next().is_some() {
        return Parsed::Invalid;
    }
    let a = match ip_address(addr) {
        Parsed::Ok(a) => a,
        Parsed::Invalid => {
            // The v4 parse failed and so did v6; if the text could still be a v4 network with a
            // mask Python reads differently, do not guess.
            return Parsed::Invalid;
        }
        Parsed::Unknown => return Parsed::Unknown,
    };
    let max = if a.version() == 4 { 32 } else { 128 };
    let len = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u32>() {
                Ok(l) if l <= max => l,
                _ => return Parsed::Invalid,
            }
        }
        // Netmask and hostmask forms (`/255.0.0.0`): not evaluated.
        Some(p) if a.version() == 4 && p.contains('.') => return Parsed::Unknown,
        Some(_) => return Parsed::Invalid,
    };
    let mask = if len == 0 {
        0
    } else {
        (u128::MAX << (max - len))
            & if max == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            }
    };
    if a.int() & !mask != 0 {
        // Host bits set: strict networks refuse it.
        return Parsed::Invalid;
    }
    Parsed::Ok((a, len))
}

/// `ipcidr_match.match(tgt)` with `grains`, or [`Outcome::Unknown`].
pub(super) fn ipcidr(tgt: &str, grains: &Value) -> Outcome {
    enum Target {
        Addr(Addr),
        Net(Addr, u32),
    }
    let target = match ip_address(tgt) {
        Parsed::Ok(a) => Target::Addr(a),
        Parsed::Unknown => return Outcome::Unknown,
        Parsed::Invalid => match ip_network(tgt) {
            Parsed::Ok((a, l)) => Target::Net(a, l),
            Parsed::Unknown => return Outcome::Unknown,
            // `return []`.
            Parsed::Invalid => return Outcome::Is(false),
        },
    };
    let version = match &target {
        Target::Addr(a) | Target::Net(a, _) => a.version(),
    };
    if grains.is_nil() {
        return Outcome::Unknown;
    }
    let Some(dict) = py_dict(grains) else {
        return Outcome::Unknown;
    };
    let proto = if version == 4 { "ipv4" } else { "ipv6" };
    let Some((_, addrs)) = dict.iter().find(|(k, _)| *k == proto) else {
        return Outcome::Is(false);
    };
    let addrs: &Value = addrs;
    match target {
        Target::Addr(a) => {
            let Some(text) = a.to_py_string() else {
                return Outcome::Unknown;
            };
            // `str(tgt) in grains[proto]`.
            match addrs {
                Value::Array(items) => Outcome::Is(items.iter().any(|i| i.is_str(&text))),
                Value::Str(b) => match std::str::from_utf8(b) {
                    Ok(s) => Outcome::Is(s.contains(&text)),
                    Err(_) => Outcome::Unknown,
                },
                Value::Map(_) => match py_dict(addrs) {
                    Some(d) => Outcome::Is(d.iter().any(|(k, _)| *k == text)),
                    None => Outcome::Unknown,
                },
                _ => Outcome::Raises,
            }
        }
        Target::Net(net, len) => {
            // `in_subnet`: `any(ip_address(item) in net for item in addrs)`; a bad item raises
            // unless an earlier one matched.
            let one = std::slice::from_ref(addrs);
            let items = match addrs {
                Value::Array(items) => items.as_slice(),
                _ => one,
            };
            let bits = if net.version() == 4 { 32 } else { 128 };
            for item in items {
                let Some(s) = item.as_str() else {
                    return Outcome::Unknown;
                };
                let a = match ip_address(s) {
                    Parsed::Ok(a) => a,
                    Parsed::Invalid => return Outcome::Raises,
                    Parsed::Unknown => return Outcome::Unknown,
                };
                if a.version() != net.version() {
                    continue;
                }
                let mask = if len == 0 {
                    0
                } else {
                    (u128::MAX << (bits - len))
                        & if bits == 32 {
                            u128::from(u32::MAX)
                        } else {
                            u128::MAX
                        }
                };
                if a.int() & mask == net.int() {
                    return Outcome::Is(true);
                }
            }
            Outcome::Is(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks_as_python_reads_them() {
        let g = Value::map()
            .with(
                "ipv4",
                Value::Array(vec![Value::str("10.1.2.3"), Value::str("127.0.0.1")]),
            )
            .with(
                "ipv6",
                Value::Array(vec![Value::str("::1"), Value::str("fe80::1")]),
            );
        assert_eq!(ipcidr("10.0.0.0/8", &g), Outcome::Is(true));
        assert_eq!(ipcidr("127.0.0.1", &g), Outcome::Is(true));
        assert_eq!(ipcidr("192.168.0.0/16", &g), Outcome::Is(false));
        assert_eq!(ipcidr("0:0::1", &g), Outcome::Is(true), "str() compresses");
        assert_eq!(ipcidr("fe80::/10", &g), Outcome::Is(true));
        // Host bits set, leading zeros, junk: Python's ip_network refuses, the matcher says [].
        assert_eq!(ipcidr("10.0.0.1/8", &g), Outcome::Is(false));
        assert_eq!(ipcidr("010.1.2.3", &g), Outcome::Is(false));
        assert_eq!(ipcidr("web01", &g), Outcome::Is(false));
        assert_eq!(ipcidr("10.0.0.0/255.0.0.0", &g), Outcome::Unknown);
        assert_eq!(ipcidr("10.0.0.0/8", &Value::Nil), Outcome::Unknown);
        let bad = Value::map().with("ipv4", Value::Array(vec![Value::str("nope")]));
        assert_eq!(ipcidr("10.0.0.0/8", &bad), Outcome::Raises);
        assert_eq!(
            compress_hextets(0x2001_0db8_0000_0000_0001_0000_0000_0001),
            "2001:db8::1:0:0:1"
        );
    }
}
