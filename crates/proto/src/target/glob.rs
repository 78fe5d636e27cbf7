//! Python's `fnmatch.fnmatchcase`: `*`, `?`, `[seq]`, `[!seq]`; no special meaning for `/`.

/// Whether `name` matches the shell-style `pattern` (case-sensitive, like `fnmatch` on POSIX).
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position after the last `*` and the name position it is currently matched up to.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        // An unclosed `[` is a literal.
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Match `c` against the class starting at `p[start] == '['`. Returns whether it matched and
/// the index after the class, or `None` if the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = matches!(p.get(i), Some('!'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            let end = p[i + 2];
            if ch <= c && c <= end {
                matched = true;
            }
            i += 3;
        } else {
            if ch == c {
                matched = true;
            }
            i += 1;
        }
    }
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
        ];
        for (p, n, want) in cases {
            assert_eq!(fnmatch(p, n), want, "{p:?} vs {n:?}");
        }
    }
}
