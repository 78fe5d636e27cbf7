//! Python `re` patterns, evaluated as Salt's minions evaluate them (`re.match`), or not at all.
//!
//! Salt minions match `pcre`, `E@`, `grain_pcre`/`P@` and `pillar_pcre`/`J@` targets with
//! Python's `re`, and a master that decides who a target reaches (for an ACL check, or the
//! minions a job waits for) must reach the same answer. Rust's `regex` crate speaks a different
//! dialect: some patterns Python accepts it refuses (look-around, `{,n}`, `\Z`, octal escapes),
//! and some both accept mean different things (`[[:alpha:]]`, `[a&&b]`, `$` before a final
//! newline, `\s`). So a pattern is parsed here with Python's grammar and rebuilt for `regex` only
//! from constructs whose meaning is the same in both; anything else is refused
//! ([`PyReError`]). Where the meaning is the same only for some texts (Unicode classes and case
//! folding on non-ASCII text, `$` on text with an inner newline), [`PyRegex::match_start`] says
//! it cannot tell (`None`) instead of guessing.
//!
//! Supported: literals and escapes (`\a \f \n \r \t \v \xhh \uhhhh \Uhhhhhhhh`, octal `\0`,
//! `\ooo`, escaped punctuation), `.`, `^`, `$`, `\A`, `\Z`, `\b`, `\B`, `\d \D \s \S \w \W`,
//! classes with ranges and escapes, `* + ? {m} {m,} {,n} {m,n}` and their lazy forms, `|`,
//! `( )`, `(?: )`, `(?P<name> )`, leading global flags `(?aimsu)` and scoped flags
//! `(?ims-ims: )`. Refused: look-around, back-references, conditionals, atomic groups and
//! possessive repeats (Python 3.11+ only), `(?x)`, `(?L)`, `(?#...)`, `\N{...}`, surrogates.

use std::fmt::Write as _;

/// Longest pattern evaluated (longer ones are refused rather than compiled for every minion).
const MAX_PATTERN: usize = 4096;
/// Deepest group nesting evaluated.
const MAX_DEPTH: usize = 64;
/// Python's `MAXREPEAT` (`_sre.MAXREPEAT` on 64-bit builds): a count this big or bigger is an
/// error; as an upper bound it means "no limit".
const MAXREPEAT: u64 = 4_294_967_295;

/// Why a pattern is not evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PyReError {
    /// Python's `re` refuses the pattern too.
    #[error("invalid regular expression {pattern:?}: {why}")]
    Invalid {
        /// The pattern.
        pattern: String,
        /// What is wrong, as Python would say it.
        why: String,
    },
    /// Python accepts the pattern but brine cannot evaluate it exactly as Python does.
    #[error(
        "regular expression {pattern:?} uses {what}, which brine cannot evaluate as Salt's minions (Python re) do"
    )]
    Unsupported {
        /// The pattern.
        pattern: String,
        /// The construct.
        what: String,
    },
}

/// A Python pattern rebuilt for the `regex` crate, with the texts it is exact for.
#[derive(Debug, Clone)]
pub struct PyRegex {
    re: regex::Regex,
    /// The same, unanchored (`re.search`).
    search: regex::Regex,
    /// `\w \d \b` and friends in Unicode mode, or IGNORECASE: exact on ASCII text only.
    unicode_sensitive: bool,
    /// `$` outside MULTILINE: exact unless the text has a newline before its last character.
    dollar: bool,
    /// `\B`: Python before 3.14 never matches it in an empty string, `regex` does.
    not_boundary: bool,
}

impl PyRegex {
    /// `re.match(pattern, text)` (anchored at the start, not at the end) as a boolean, or `None`
    /// when this text is one the translation is not exact for.
    pub fn match_start(&self, text: &str) -> Option<bool> {
        if self.unicode_sensitive && !text.is_ascii() {
            return None;
        }
        if self.dollar && text.strip_suffix('\n').unwrap_or(text).contains('\n') {
            return None;
        }
        if self.not_boundary && text.is_empty() {
            return None;
        }
        Some(self.re.is_match(text))
    }

    /// `re.search(pattern, text)` (a match anywhere) as a boolean, or `None` when this text is
    /// one the translation is not exact for.
    pub fn search(&self, text: &str) -> Option<bool> {
        self.match_start(text)?;
        Some(self.search.is_match(text))
    }
}

/// Parse `pattern` as Python's `re` does and build its exact equivalent.
///
/// # Errors
/// [`PyReError::Invalid`] when Python refuses the pattern too, [`PyReError::Unsupported`] when
/// it uses something brine does not evaluate.
pub fn compile(pattern: &str) -> Result<PyRegex, PyReError> {
    if pattern.len() > MAX_PATTERN {
        return Err(unsupported(pattern, "more than 4096 bytes"));
    }
    let mut p = Parser {
        pat: pattern,
        chars: pattern.chars().collect(),
        pos: 0,
        out: String::with_capacity(pattern.len() * 4),
        names: Vec::new(),
        unicode_sensitive: false,
        dollar: false,
        not_boundary: false,
        ascii: false,
    };
    let flags = p.global_flags()?;
    p.alternation(flags, 0)?;
    if p.pos < p.chars.len() {
        // Only a `)` stops the top level early.
        return Err(p.invalid("unbalanced parenthesis"));
    }
    let build = |anchor: &str| {
        regex::RegexBuilder::new(&format!("{anchor}(?:{})", p.out))
            .size_limit(1 << 20)
            .nest_limit(4 * MAX_DEPTH as u32)
            .build()
            .map_err(|_| unsupported(pattern, "more repetition than brine evaluates"))
    };
    Ok(PyRegex {
        re: build("\\A")?,
        search: build("")?,
        unicode_sensitive: p.unicode_sensitive,
        dollar: p.dollar,
        not_boundary: p.not_boundary,
    })
}

fn unsupported(pattern: &str, what: &str) -> PyReError {
    PyReError::Unsupported {
        pattern: pattern.to_owned(),
        what: what.to_owned(),
    }
}

/// Flags in effect at a point of the pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    ignorecase: bool,
    multiline: bool,
    dotall: bool,
}

/// What an escape or class member stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Char(char),
    /// `\d \D \s \S \w \W` (the letter).
    Category(char),
}

struct Parser<'p> {
    pat: &'p str,
    chars: Vec<char>,
    pos: usize,
    out: String,
    names: Vec<String>,
    unicode_sensitive: bool,
    dollar: bool,
    not_boundary: bool,
    /// `(?a)`: `\w \d \s \b` are ASCII-only.
    ascii: bool,
}

/// Whether the item just emitted can take a repeat, as Python decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// Nothing yet in this sequence: a repeat here is "nothing to repeat".
    None,
    /// An anchor or boundary: "nothing to repeat" too.
    At,
    /// A repeat: another one is "multiple repeat".
    Repeat,
    /// Something repeatable, emitted from this offset of `out`.
    Plain(usize),
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn invalid(&self, why: &str) -> PyReError {
        PyReError::Invalid {
            pattern: self.pat.to_owned(),
            why: format!("{why} at position {}", self.pos),
        }
    }

    fn unsupported(&self, what: &str) -> PyReError {
        unsupported(self.pat, what)
    }

    /// Leading `(?aimsux)` groups (Python 3.11 refuses global flags anywhere else; 3.10 warns).
    fn global_flags(&mut self) -> Result<Flags, PyReError> {
        let mut flags = Flags::default();
        let mut unicode = false;
        while self.peek() == Some('(') && self.peek_at(1) == Some('?') {
            let mut i = self.pos + 2;
            let mut letters = Vec::new();
            while let Some(&c) = self.chars.get(i) {
                if "aiLmsux".contains(c) {
                    letters.push(c);
                    i += 1;
                } else {
                    break;
                }
            }
            if letters.is_empty() || self.chars.get(i) != Some(&')') {
                break;
            }
            self.pos = i + 1;
            for c in letters {
                match c {
                    'i' => flags.ignorecase = true,
                    'm' => flags.multiline = true,
                    's' => flags.dotall = true,
                    'a' => self.ascii = true,
                    'u' => unicode = true,
                    'L' => {
                        return Err(self
                            .invalid("bad inline flags: cannot use 'L' flag with a str pattern"));
                    }
                    _ => return Err(self.unsupported("verbose mode (?x)")),
                }
            }
            if self.ascii && unicode {
                return Err(
                    self.invalid("bad inline flags: flags 'a', 'u' and 'L' are incompatible")
                );
            }
        }
        Ok(flags)
    }

    fn alternation(&mut self, flags: Flags, depth: usize) -> Result<(), PyReError> {
        if depth > MAX_DEPTH {
            return Err(self.unsupported("groups nested more than 64 deep"));
        }
        loop {
            self.sequence(flags, depth)?;
            if self.eat('|') {
                self.out.push('|');
                continue;
            }
            return Ok(());
        }
    }

    fn sequence(&mut self, flags: Flags, depth: usize) -> Result<(), PyReError> {
        let mut last = Item::None;
        while let Some(c) = self.peek() {
            match c {
                '|' | ')' => return Ok(()),
                '*' | '+' | '?' => {
                    self.pos += 1;
                    let (min, max) = match c {
                        '*' => (0, None),
                        '+' => (1, None),
                        _ => (0, Some(1)),
                    };
                    last = self.repeat(last, min, max)?;
                }
                '{' => {
                    let start = self.pos;
                    self.pos += 1;
                    match self.brace()? {
                        Some((min, max)) => last = self.repeat(last, min, max)?,
                        None => {
                            // Not a repeat: `{` is a literal and parsing goes on after it.
                            self.pos = start + 1;
                            last = self.literal('{', flags)?;
                        }
                    }
                }
                '(' => {
                    self.pos += 1;
                    last = self.group(flags, depth)?;
                }
                '[' => {
                    self.pos += 1;
                    let at = self.out.len();
                    self.class(flags)?;
                    last = Item::Plain(at);
                }
                '.' => {
                    self.pos += 1;
                    let at = self.out.len();
                    self.out
                        .push_str(if flags.dotall { "(?s:.)" } else { "[^\\n]" });
                    last = Item::Plain(at);
                }
                '^' => {
                    self.pos += 1;
                    self.out
                        .push_str(if flags.multiline { "(?m:^)" } else { "\\A" });
                    last = Item::At;
                }
                '$' => {
                    self.pos += 1;
                    // Python: the end, or before a newline that ends the text. `(?m:$)` is that
                    // on every text with no newline before its last character.
                    self.out.push_str("(?m:$)");
                    if !flags.multiline {
                        self.dollar = true;
                    }
                    last = Item::At;
                }
                '\\' => {
                    self.pos += 1;
                    last = self.escape(flags)?;
                }
                c => {
                    self.pos += 1;
                    last = self.literal(c, flags)?;
                }
            }
        }
        Ok(())
    }

    /// After `{`: `Some((min, max))` for a well-formed repeat, `None` when Python reads the `{`
    /// as a literal.
    fn brace(&mut self) -> Result<Option<(u64, Option<u64>)>, PyReError> {
        if self.peek() == Some('}') {
            return Ok(None);
        }
        let digits = |p: &mut Self| {
            let mut s = String::new();
            while let Some(c) = p.peek().filter(char::is_ascii_digit) {
                s.push(c);
                p.pos += 1;
            }
            s
        };
        let lo = digits(self);
        let hi = if self.eat(',') {
            digits(self)
        } else {
            lo.clone()
        };
        if !self.eat('}') {
            return Ok(None);
        }
        let num = |p: &Self, s: &str| -> Result<Option<u64>, PyReError> {
            if s.is_empty() {
                return Ok(None);
            }
            match s.parse::<u64>() {
                Ok(n) if n < MAXREPEAT => Ok(Some(n)),
                _ => Err(p.invalid("the repetition number is too large")),
            }
        };
        let min = num(self, &lo)?.unwrap_or(0);
        let max = num(self, &hi)?;
        if max.is_some_and(|m| m < min) {
            return Err(self.invalid("min repeat greater than max repeat"));
        }
        Ok(Some((min, max)))
    }

    fn repeat(&mut self, last: Item, min: u64, max: Option<u64>) -> Result<Item, PyReError> {
        let at = match last {
            Item::None | Item::At => return Err(self.invalid("nothing to repeat")),
            Item::Repeat => return Err(self.invalid("multiple repeat")),
            Item::Plain(at) => at,
        };
        if self.peek() == Some('+') {
            return Err(self.unsupported("a possessive repeat (Python 3.11+ only)"));
        }
        let lazy = self.eat('?');
        if self.peek() == Some('+') && lazy {
            // `a*?+`: multiple repeat in every Python.
            return Err(self.invalid("multiple repeat"));
        }
        let body = self.out.split_off(at);
        let q = match (min, max) {
            (0, None) => "*".to_owned(),
            (1, None) => "+".to_owned(),
            (0, Some(1)) => "?".to_owned(),
            (m, None) => format!("{{{m},}}"),
            (m, Some(n)) if m == n => format!("{{{m}}}"),
            (m, Some(n)) => format!("{{{m},{n}}}"),
        };
        let _ = write!(self.out, "(?:{body}){q}{}", if lazy { "?" } else { "" });
        Ok(Item::Repeat)
    }

    fn group(&mut self, flags: Flags, depth: usize) -> Result<Item, PyReError> {
        let at = self.out.len();
        let mut inner = flags;
        if self.eat('?') {
            match self.peek() {
                Some(':') => self.pos += 1,
                Some('P') => {
                    self.pos += 1;
                    if self.eat('<') {
                        let mut name = String::new();
                        loop {
                            match self.peek() {
                                None => return Err(self.invalid("missing >, unterminated name")),
                                Some('>') => {
                                    self.pos += 1;
                                    break;
                                }
                                Some(c) => {
                                    name.push(c);
                                    self.pos += 1;
                                }
                            }
                        }
                        if name.is_empty() {
                            return Err(self.invalid("missing group name"));
                        }
                        let ascii_ident = name
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if !ascii_ident {
                            return if name.is_ascii() {
                                Err(self.invalid(&format!("bad character in group name {name:?}")))
                            } else {
                                Err(self.unsupported("a non-ASCII group name"))
                            };
                        }
                        if self.names.contains(&name) {
                            return Err(
                                self.invalid(&format!("redefinition of group name {name:?}"))
                            );
                        }
                        self.names.push(name);
                    } else if self.peek() == Some('=') {
                        return Err(self.unsupported("a back-reference (?P=name)"));
                    } else {
                        return Err(self.invalid("unknown extension ?P"));
                    }
                }
                Some('=' | '!') => return Err(self.unsupported("a look-ahead assertion")),
                Some('<') if matches!(self.peek_at(1), Some('=' | '!')) => {
                    return Err(self.unsupported("a look-behind assertion"));
                }
                Some('(') => return Err(self.unsupported("a conditional group")),
                Some('>') => return Err(self.unsupported("an atomic group (Python 3.11+ only)")),
                Some('#') => return Err(self.unsupported("a comment group")),
                Some(c) if "aiLmsux-".contains(c) => inner = self.scoped_flags(flags)?,
                _ => return Err(self.invalid("unknown extension")),
            }
        }
        self.out.push_str("(?:");
        self.alternation(inner, depth + 1)?;
        if !self.eat(')') {
            return Err(self.invalid("missing ), unterminated subpattern"));
        }
        self.out.push(')');
        Ok(Item::Plain(at))
    }

    /// `(?ims-ims:`; the `(` and `?` are consumed. Global flags here are refused.
    fn scoped_flags(&mut self, mut flags: Flags) -> Result<Flags, PyReError> {
        let mut on = Vec::new();
        let mut off = Vec::new();
        while let Some(c) = self.peek().filter(|c| "aiLmsux".contains(*c)) {
            on.push(c);
            self.pos += 1;
        }
        if self.eat('-') {
            while let Some(c) = self.peek().filter(|c| "aiLmsux".contains(*c)) {
                if "aLu".contains(c) {
                    return Err(
                        self.invalid("bad inline flags: cannot turn off flags 'a', 'u' and 'L'")
                    );
                }
                off.push(c);
                self.pos += 1;
            }
            if off.is_empty() {
                return Err(self.invalid("missing flag"));
            }
        }
        match self.peek() {
            Some(':') => self.pos += 1,
            Some(')') => {
                return Err(self.unsupported("global flags not at the start of the expression"));
            }
            _ => return Err(self.invalid("missing :")),
        }
        if on.iter().any(|c| off.contains(c)) {
            return Err(self.invalid("bad inline flags: flag turned on and off"));
        }
        for c in on.iter().chain(&off) {
            match c {
                'x' => return Err(self.unsupported("verbose mode (?x)")),
                'L' => {
                    return Err(
                        self.invalid("bad inline flags: cannot use 'L' flag with a str pattern")
                    );
                }
                'a' | 'u' => return Err(self.unsupported("a scoped ASCII or Unicode flag")),
                _ => {}
            }
        }
        for (list, v) in [(&on, true), (&off, false)] {
            for c in list {
                match c {
                    'i' => flags.ignorecase = v,
                    'm' => flags.multiline = v,
                    's' => flags.dotall = v,
                    _ => {}
                }
            }
        }
        Ok(flags)
    }

    /// After `\` outside a class.
    fn escape(&mut self, flags: Flags) -> Result<Item, PyReError> {
        let Some(c) = self.peek() else {
            return Err(self.invalid("bad escape (end of pattern)"));
        };
        let at = self.out.len();
        match c {
            'A' => {
                self.pos += 1;
                self.out.push_str("\\A");
                return Ok(Item::At);
            }
            'Z' => {
                self.pos += 1;
                self.out.push_str("\\z");
                return Ok(Item::At);
            }
            'b' | 'B' => {
                self.pos += 1;
                if self.ascii {
                    self.out
                        .push_str(if c == 'b' { "(?-u:\\b)" } else { "(?-u:\\B)" });
                } else {
                    self.out.push_str(if c == 'b' { "\\b" } else { "\\B" });
                    self.unicode_sensitive = true;
                }
                if c == 'B' {
                    self.not_boundary = true;
                }
                return Ok(Item::At);
            }
            '1'..='9' => {
                // `\1`-`\99` are group references; three octal digits are a character.
                let (a, b) = (self.peek_at(1), self.peek_at(2));
                let octal = |x: Option<char>| x.is_some_and(|x| ('0'..='7').contains(&x));
                if octal(Some(c)) && octal(a) && octal(b) {
                    self.pos += 3;
                    let v = u32::from_str_radix(
                        &format!("{c}{}{}", a.unwrap_or('0'), b.unwrap_or('0')),
                        8,
                    )
                    .unwrap_or(u32::MAX);
                    if v > 0o377 {
                        return Err(self.invalid("octal escape value outside of range 0-0o377"));
                    }
                    return self.literal(char::from_u32(v).unwrap_or('\0'), flags);
                }
                return Err(self.unsupported("a back-reference"));
            }
            _ => {}
        }
        match self.atom_escape(false)? {
            Atom::Char(ch) => self.literal(ch, flags),
            Atom::Category(k) => {
                self.category(k);
                Ok(Item::Plain(at))
            }
        }
    }

    /// An escape that means a character or a category, outside or inside a class (`\` consumed).
    fn atom_escape(&mut self, in_class: bool) -> Result<Atom, PyReError> {
        let Some(c) = self.peek() else {
            return Err(self.invalid("bad escape (end of pattern)"));
        };
        self.pos += 1;
        let hex = |p: &mut Self, n: usize, what: &str| -> Result<u32, PyReError> {
            let mut s = String::new();
            for _ in 0..n {
                match p.peek().filter(char::is_ascii_hexdigit) {
                    Some(h) => {
                        s.push(h);
                        p.pos += 1;
                    }
                    None => return Err(p.invalid(&format!("incomplete escape \\{what}{s}"))),
                }
            }
            Ok(u32::from_str_radix(&s, 16).unwrap_or(u32::MAX))
        };
        let ch = match c {
            'a' => '\u{7}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            'b' if in_class => '\u{8}',
            'x' => {
                let v = hex(self, 2, "x")?;
                char::from_u32(v).unwrap_or('\0')
            }
            'u' | 'U' => {
                let v = hex(self, if c == 'u' { 4 } else { 8 }, &c.to_string())?;
                if v > 0x10_FFFF {
                    return Err(self.invalid("bad escape: code point out of range"));
                }
                char::from_u32(v).ok_or_else(|| self.unsupported("a surrogate code point"))?
            }
            'N' => return Err(self.unsupported("a named Unicode escape \\N{...}")),
            'd' | 'D' | 's' | 'S' | 'w' | 'W' => return Ok(Atom::Category(c)),
            '0'..='7' => {
                // Octal: `\0` plus up to two more octal digits outside a class; up to three
                // octal digits in all inside one.
                let mut s = c.to_string();
                let more = if in_class || c == '0' { 2 } else { 0 };
                for _ in 0..more {
                    match self.peek().filter(|d| ('0'..='7').contains(d)) {
                        Some(d) => {
                            s.push(d);
                            self.pos += 1;
                        }
                        None => break,
                    }
                }
                let v = u32::from_str_radix(&s, 8).unwrap_or(u32::MAX);
                if v > 0o377 {
                    return Err(self.invalid("octal escape value outside of range 0-0o377"));
                }
                char::from_u32(v).unwrap_or('\0')
            }
            '8' | '9' if in_class => return Err(self.invalid("bad escape in a character set")),
            c if c.is_ascii_alphanumeric() => {
                return Err(self.invalid(&format!("bad escape \\{c}")));
            }
            c => c,
        };
        Ok(Atom::Char(ch))
    }

    fn category(&mut self, k: char) {
        // Unicode `\s` is the fixed set `str.isspace()` accepts; ASCII mode is six characters.
        const SPACE_UNI: &str = "\\t-\\r\\x1C-\\x20\\x85\\xA0\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";
        const SPACE_ASCII: &str = "\\t-\\r ";
        let (set, negated) = match (k, self.ascii) {
            ('s', false) | ('S', false) => (SPACE_UNI, k == 'S'),
            ('s', true) | ('S', true) => (SPACE_ASCII, k == 'S'),
            ('d', true) | ('D', true) => ("0-9", k == 'D'),
            ('w', true) | ('W', true) => ("0-9A-Za-z_", k == 'W'),
            _ => {
                // Unicode `\d`/`\w`: the same as `regex` on ASCII text.
                self.unicode_sensitive = true;
                let _ = write!(self.out, "\\{k}");
                return;
            }
        };
        let _ = write!(self.out, "[{}{set}]", if negated { "^" } else { "" });
    }

    fn literal(&mut self, c: char, flags: Flags) -> Result<Item, PyReError> {
        let at = self.out.len();
        if flags.ignorecase {
            if !c.is_ascii() {
                return Err(self.unsupported("a non-ASCII character under IGNORECASE"));
            }
            self.unicode_sensitive = true;
            let _ = write!(self.out, "(?i:\\x{{{:X}}})", c as u32);
        } else {
            let _ = write!(self.out, "\\x{{{:X}}}", c as u32);
        }
        Ok(Item::Plain(at))
    }

    /// A class; the `[` is consumed.
    fn class(&mut self, flags: Flags) -> Result<(), PyReError> {
        let negate = self.eat('^');
        if flags.ignorecase {
            self.unicode_sensitive = true;
        }
        let mut members = String::new();
        let mut first = true;
        loop {
            let Some(c) = self.peek() else {
                return Err(self.invalid("unterminated character set"));
            };
            self.pos += 1;
            if c == ']' && !first {
                break;
            }
            first = false;
            let a = if c == '\\' {
                self.class_escape()?
            } else {
                Atom::Char(c)
            };
            if self.peek() == Some('-') {
                self.pos += 1;
                let Some(that) = self.peek() else {
                    return Err(self.invalid("unterminated character set"));
                };
                self.pos += 1;
                if that == ']' {
                    self.member(&mut members, a, flags)?;
                    self.member(&mut members, Atom::Char('-'), flags)?;
                    break;
                }
                let b = if that == '\\' {
                    self.class_escape()?
                } else {
                    Atom::Char(that)
                };
                let (Atom::Char(lo), Atom::Char(hi)) = (a, b) else {
                    return Err(self.invalid("bad character range"));
                };
                if hi < lo {
                    return Err(self.invalid("bad character range"));
                }
                if flags.ignorecase {
                    if !lo.is_ascii() || !hi.is_ascii() {
                        return Err(self.unsupported("a non-ASCII range under IGNORECASE"));
                    }
                    self.unicode_sensitive = true;
                }
                let _ = write!(members, "\\x{{{:X}}}-\\x{{{:X}}}", lo as u32, hi as u32);
            } else {
                self.member(&mut members, a, flags)?;
            }
        }
        let body = format!("[{}{members}]", if negate { "^" } else { "" });
        if flags.ignorecase {
            let _ = write!(self.out, "(?i:{body})");
        } else {
            self.out.push_str(&body);
        }
        Ok(())
    }

    fn class_escape(&mut self) -> Result<Atom, PyReError> {
        match self.peek() {
            Some(c @ ('A' | 'Z' | 'B')) => Err(self.invalid(&format!("bad escape \\{c}"))),
            _ => self.atom_escape(true),
        }
    }

    fn member(&mut self, members: &mut String, a: Atom, flags: Flags) -> Result<(), PyReError> {
        match a {
            Atom::Char(c) => {
                if flags.ignorecase {
                    if !c.is_ascii() {
                        return Err(self.unsupported("a non-ASCII character under IGNORECASE"));
                    }
                    self.unicode_sensitive = true;
                }
                let _ = write!(members, "\\x{{{:X}}}", c as u32);
            }
            Atom::Category(k) => {
                // A category inside a class: `regex` nests classes, so the same text works.
                let saved = std::mem::take(&mut self.out);
                self.category(k);
                let cat = std::mem::replace(&mut self.out, saved);
                members.push_str(&cat);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> Option<bool> {
        compile(p)
            .unwrap_or_else(|e| panic!("{p:?}: {e}"))
            .match_start(t)
    }

    #[test]
    fn python_semantics_where_regex_differs() {
        // `re.match` is anchored at the start only.
        assert_eq!(m("web", "web01"), Some(true));
        assert_eq!(m("eb", "web01"), Some(false));
        // `{,n}` is 0..=n in Python; a malformed `{` is a literal.
        assert_eq!(m("a{,2}b", "aab"), Some(true));
        assert_eq!(m("a{,2}b", "aaab"), Some(false));
        assert_eq!(m("a{x}", "a{x}"), Some(true));
        assert_eq!(m("a{}", "a{}"), Some(true));
        assert_eq!(m("a{1,", "a{1,"), Some(true));
        // `\Z` is the end; `$` also matches before a final newline.
        assert_eq!(m("web\\Z", "web"), Some(true));
        assert_eq!(m("web\\Z", "web\n"), Some(false));
        assert_eq!(m("web$", "web\n"), Some(true));
        assert_eq!(m("web$", "web\nx"), None, "an inner newline: not exact");
        // Octal escapes.
        assert_eq!(m("\\101", "A"), Some(true));
        assert_eq!(m("\\0", "\0"), Some(true));
        assert_eq!(m("[\\101-\\102]", "B"), Some(true));
        // Python has no POSIX classes or set operations: `[[:a:]]` is a set then `]`.
        assert_eq!(m("[[:a:]]", "a]"), Some(true));
        assert_eq!(m("[[:a:]]", "a"), Some(false));
        assert_eq!(m("[a&&b]", "&"), Some(true));
        assert_eq!(m("[--/]", "."), Some(true));
        // Unicode `\s` is Python's set (0x1c-0x1f are spaces there, not in `regex`).
        assert_eq!(m("\\s", "\u{1c}"), Some(true));
        assert_eq!(m("[\\s]", "\u{1f}"), Some(true));
        assert_eq!(m("\\S", "\u{1c}"), Some(false));
        // (?a): ASCII classes; Unicode classes on non-ASCII text are not guessed.
        assert_eq!(m("(?a)\\w", "é"), Some(false));
        assert_eq!(m("\\w", "é"), None);
        assert_eq!(m("\\w", "e"), Some(true));
        // `.` stops at a newline unless DOTALL.
        assert_eq!(m(".", "\n"), Some(false));
        assert_eq!(m("(?s).", "\n"), Some(true));
        assert_eq!(m("(?s:.)x", "\nx"), Some(true));
        // IGNORECASE.
        assert_eq!(m("(?i)WEB", "web"), Some(true));
        assert_eq!(m("(?i:W)EB", "wEB"), Some(true));
        assert_eq!(m("(?i:W)EB", "web"), Some(false));
        assert_eq!(m("(?i)[A-C]", "b"), Some(true));
        // `[]]` and `[^]]`: a first `]` is a member.
        assert_eq!(m("[]]", "]"), Some(true));
        assert_eq!(m("[^]]", "]"), Some(false));
        assert_eq!(m("[a-]", "-"), Some(true));
        // `\b` in a class is a backspace.
        assert_eq!(m("[\\b]", "\u{8}"), Some(true));
        assert_eq!(m("\\B", ""), None);
        // re.search: anywhere, but `^` still means the start.
        let s = |p: &str, t: &str| compile(p).unwrap().search(t);
        assert_eq!(s("\\.git", "a/.git/x"), Some(true));
        assert_eq!(s("^\\.git", "a/.git/x"), Some(false));
        assert_eq!(s("x$", "a/x"), Some(true));
    }

    #[test]
    fn refusals_say_why() {
        for (p, unsupported) in [
            ("web(?=x)", true),
            ("(?<!a)b", true),
            ("(a)\\1", true),
            ("(?P<n>a)(?P=n)", true),
            ("(?>a)", true),
            ("a*+", true),
            ("(?x) a", true),
            ("a(?i)b", true),
            ("\\N{DIGIT ONE}", true),
            ("(?#c)", true),
            ("(?i)é", true),
            ("*a", false),
            ("a**", false),
            ("^*", false),
            ("(a", false),
            ("a)", false),
            ("[a", false),
            ("[z-a]", false),
            ("[\\d-z]", false),
            ("\\q", false),
            ("\\x4", false),
            ("\\400", false),
            ("a{3,2}", false),
            ("(?L)a", false),
            ("(?au)a", false),
            ("(?P<1>a)", false),
            ("(?P<a>x)(?P<a>y)", false),
            ("[\\A]", false),
        ] {
            match compile(p) {
                Err(PyReError::Unsupported { .. }) if unsupported => {}
                Err(PyReError::Invalid { .. }) if !unsupported => {}
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }
}
