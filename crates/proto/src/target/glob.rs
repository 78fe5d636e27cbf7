//! Python's `fnmatch.fnmatch` on POSIX (`fnmatchcase`): the pattern is translated to a regular
//! expression exactly as `fnmatch.translate` does (Python 3.9-3.12) and evaluated with the
//! Python-`re` evaluator, so brackets, ranges, `!`, a lone `[` and the rest behave as on a Salt
//! minion.

use std::cell::RefCell;
use std::collections::HashMap;

use super::pyre::{self, PyRegex};

/// Longest glob evaluated.
const MAX_GLOB: usize = 1024;
/// Compiled globs kept per thread.
const CACHE_SIZE: usize = 256;

thread_local! {
    static CACHE: RefCell<HashMap<String, Option<PyRegex>>> = RefCell::new(HashMap::new());
}

/// Whether `name` matches the shell-style `pattern` (case-sensitive, like `fnmatch` on POSIX).
/// A pattern brine cannot evaluate exactly does not match.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    py_fnmatch(name, pattern) == Some(true)
}

/// `fnmatch.fnmatch(name, pattern)`, or `None` where brine cannot be sure of Python's answer.
pub(super) fn py_fnmatch(name: &str, pattern: &str) -> Option<bool> {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(re) = c.get(pattern) {
            return re.as_ref()?.match_start(name);
        }
        if c.len() >= CACHE_SIZE {
            c.clear();
        }
        let re = translate(pattern).and_then(|t| pyre::compile(&t).ok());
        let m = re.as_ref().and_then(|re| re.match_start(name));
        c.insert(pattern.to_owned(), re);
        m
    })
}

/// `re.escape` of one character.
fn re_escape(c: char, out: &mut String) {
    if "()[]{}?*+-|^$\\.&~# \t\n\r\u{b}\u{c}".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

/// `fnmatch.translate(pat)` (without the look-ahead trick Python uses to keep `*` from
/// backtracking, which does not change what matches). `None` where Python raises.
fn translate(pattern: &str) -> Option<String> {
    if pattern.len() > MAX_GLOB {
        return None;
    }
    let pat: Vec<char> = pattern.chars().collect();
    let n = pat.len();
    let mut res = String::from("(?s:");
    let mut last_star = false;
    let mut i = 0;
    while i < n {
        let c = pat[i];
        i += 1;
        if c == '*' {
            if !last_star {
                res.push_str(".*");
            }
            last_star = true;
            continue;
        }
        last_star = false;
        match c {
            '?' => res.push('.'),
            '[' => {
                let mut j = i;
                if j < n && pat[j] == '!' {
                    j += 1;
                }
                if j < n && pat[j] == ']' {
                    j += 1;
                }
                while j < n && pat[j] != ']' {
                    j += 1;
                }
                if j >= n {
                    res.push_str("\\[");
                    continue;
                }
                let mut stuff = if pat[i..j].contains(&'-') {
                    class_chunks(&pat, i, j)?
                } else {
                    pat[i..j].iter().collect::<String>().replace('\\', "\\\\")
                };
                // Set operations (`&&`, `~~`, `||`) are escaped.
                stuff = stuff
                    .replace('&', "\\&")
                    .replace('~', "\\~")
                    .replace('|', "\\|");
                i = j + 1;
                if stuff.is_empty() {
                    // An empty range never matches.
                    res.push_str("[^\\x00-\\U0010ffff]");
                } else if stuff == "!" {
                    res.push('.');
                } else {
                    res.push('[');
                    if let Some(rest) = stuff.strip_prefix('!') {
                        res.push('^');
                        res.push_str(rest);
                    } else {
                        if stuff.starts_with(['^', '[']) {
                            res.push('\\');
                        }
                        res.push_str(&stuff);
                    }
                    res.push(']');
                }
            }
            c => re_escape(c, &mut res),
        }
    }
    res.push_str(")\\Z");
    Some(res)
}

/// The inside of a bracket with hyphens, as `translate` rewrites it: split into chunks at the
/// hyphens that make ranges, empty ranges removed, other hyphens and backslashes escaped.
fn class_chunks(pat: &[char], start: usize, j: usize) -> Option<String> {
    let mut chunks: Vec<Vec<char>> = Vec::new();
    let mut i = start;
    let mut k = if pat[start] == '!' {
        start + 2
    } else {
        start + 1
    };
    while let Some(found) = (k..j).find(|&x| pat[x] == '-') {
        chunks.push(pat[i..found].to_vec());
        i = found + 1;
        k = found + 3;
    }
    let chunk = pat[i..j].to_vec();
    if chunk.is_empty() {
        chunks.last_mut()?.push('-');
    } else {
        chunks.push(chunk);
    }
    for k in (1..chunks.len()).rev() {
        // Python indexes both ends: an empty chunk here raises IndexError.
        let (Some(&a), Some(&b)) = (chunks[k - 1].last(), chunks[k].first()) else {
            return None;
        };
        if a > b {
            let mut merged = chunks[k - 1][..chunks[k - 1].len() - 1].to_vec();
            merged.extend_from_slice(&chunks[k][1..]);
            chunks[k - 1] = merged;
            chunks.remove(k);
        }
    }
    Some(
        chunks
            .iter()
            .map(|s| {
                s.iter()
                    .collect::<String>()
                    .replace('\\', "\\\\")
                    .replace('-', "\\-")
            })
            .collect::<Vec<_>>()
            .join("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn like_python_fnmatchcase() {
        let cases = [
            ("*", "web01", true),
            ("web*", "web01", true),
            ("web?1", "web01", true),
            ("web?", "web01", false),
            ("*01", "web01", true),
            ("w*b*1", "web01", true),
            ("web[0-9]1", "web01", true),
            ("web[!0-9]1", "web01", false),
            ("web[]]", "web]", true),
            ("web[", "web[", true),
            ("WEB*", "web01", false),
            ("a/*", "a/b/c", true),
            ("", "", true),
            ("", "x", false),
            ("**a", "bba", true),
            ("*", "a\nb", true),
            ("[a--b]", "b", true),
            ("[a--b]", "-", false),
            ("[b-a]", "a", false),
            ("[!b-a]", "z", true),
            ("[^a]", "^", true),
            ("[a&&b]", "&", true),
            ("\\*", "\\x", true),
            ("[\\]", "\\", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(fnmatch(p, n), want, "{p:?} vs {n:?}");
        }
    }
}
