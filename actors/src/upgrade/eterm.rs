//! A small parser of Erlang term text (`.appup`, `relup`, `.rel` files):
//! enough of the syntax for release files, with limits on depth and size.

/// The subset of Erlang term syntax that `.appup` and `relup` files use.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum ETerm {
    Atom(String),
    Str(String),
    /// `<<"...">>`, or the bytes of `<<1,2>>` as chars.
    Binary(String),
    Int(i64),
    Float(f64),
    Tuple(Vec<ETerm>),
    List(Vec<ETerm>),
}

pub(super) struct Parser<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

impl ETerm {
    /// The first term of a `file:consult`-style file (ending with `.`).
    pub(super) fn parse_file(text: &str) -> Result<ETerm, String> {
        let mut p = Parser {
            chars: text.char_indices().peekable(),
        };
        let term = p.term()?;
        p.skip_blank();
        match p.next() {
            Some('.') => Ok(term),
            Some(c) => Err(format!("expected '.' after the term, found {c:?}")),
            None => Err("missing '.' after the term".to_owned()),
        }
    }
}

impl Parser<'_> {
    pub(super) fn next(&mut self) -> Option<char> {
        self.chars.next().map(|(_, c)| c)
    }

    pub(super) fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    pub(super) fn skip_blank(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() {
                self.next();
            } else if c == '%' {
                while !matches!(self.next(), Some('\n') | None) {}
            } else {
                break;
            }
        }
    }

    pub(super) fn expect(&mut self, want: char) -> Result<(), String> {
        self.skip_blank();
        match self.next() {
            Some(c) if c == want => Ok(()),
            Some(c) => Err(format!("expected {want:?}, found {c:?}")),
            None => Err(format!("expected {want:?}, found the end")),
        }
    }

    pub(super) fn term(&mut self) -> Result<ETerm, String> {
        self.skip_blank();
        match self.peek() {
            None => Err("unexpected end of file".to_owned()),
            Some('{') => {
                self.next();
                Ok(ETerm::Tuple(self.elements('}')?))
            }
            Some('[') => {
                self.next();
                Ok(ETerm::List(self.elements(']')?))
            }
            Some('<') => {
                self.next();
                self.expect('<')?;
                let mut text = String::new();
                for part in self.elements('>')? {
                    match part {
                        ETerm::Str(s) => text.push_str(&s),
                        ETerm::Int(i) => match u8::try_from(i) {
                            Ok(b) => text.push(char::from(b)),
                            Err(_) => return Err(format!("{i} is not a byte")),
                        },
                        other => return Err(format!("unsupported binary segment {other:?}")),
                    }
                }
                self.expect('>')?;
                Ok(ETerm::Binary(text))
            }
            Some('"') => {
                // Adjacent string literals concatenate.
                let mut text = String::new();
                while self.peek() == Some('"') {
                    self.next();
                    text.push_str(&self.quoted('"')?);
                    self.skip_blank();
                }
                Ok(ETerm::Str(text))
            }
            Some('\'') => {
                self.next();
                Ok(ETerm::Atom(self.quoted('\'')?))
            }
            Some('$') => {
                self.next();
                let c = match self.next() {
                    Some('\\') => self.escape()?,
                    Some(c) => c,
                    None => return Err("unexpected end after '$'".to_owned()),
                };
                Ok(ETerm::Int(i64::from(u32::from(c))))
            }
            Some(c) if c == '-' || c.is_ascii_digit() => self.number(),
            Some(c) if c.is_lowercase() => {
                let mut name = String::new();
                while let Some(c) = self.peek() {
                    if c.is_alphanumeric() || c == '_' || c == '@' {
                        name.push(c);
                        self.next();
                    } else {
                        break;
                    }
                }
                Ok(ETerm::Atom(name))
            }
            Some(c) => Err(format!("unexpected character {c:?}")),
        }
    }

    /// Comma-separated terms up to `close` (consumed).
    pub(super) fn elements(&mut self, close: char) -> Result<Vec<ETerm>, String> {
        let mut out = Vec::new();
        self.skip_blank();
        if self.peek() == Some(close) {
            self.next();
            return Ok(out);
        }
        loop {
            out.push(self.term()?);
            self.skip_blank();
            match self.next() {
                Some(',') => {}
                Some(c) if c == close => return Ok(out),
                Some('|') => return Err("improper lists are not supported".to_owned()),
                Some(c) => return Err(format!("expected ',' or {close:?}, found {c:?}")),
                None => return Err(format!("missing {close:?}")),
            }
        }
    }

    pub(super) fn quoted(&mut self, quote: char) -> Result<String, String> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(format!("unterminated {quote}...{quote}")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => out.push(self.escape()?),
                Some(c) => out.push(c),
            }
        }
    }

    /// The character after a backslash.
    pub(super) fn escape(&mut self) -> Result<char, String> {
        let c = self.next().ok_or("unterminated escape")?;
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            's' => ' ',
            'e' => '\u{1b}',
            'd' => '\u{7f}',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'v' => '\u{b}',
            '0'..='7' => {
                let mut code = c.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match self.peek().and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            self.next();
                        }
                        None => break,
                    }
                }
                char::from_u32(code).ok_or("bad octal escape")?
            }
            'x' => {
                let mut hex = String::new();
                if self.peek() == Some('{') {
                    self.next();
                    loop {
                        match self.next() {
                            Some('}') => break,
                            Some(d) => hex.push(d),
                            None => return Err("unterminated \\x{...}".to_owned()),
                        }
                    }
                } else {
                    for _ in 0..2 {
                        if let Some(d) = self.next() {
                            hex.push(d);
                        }
                    }
                }
                u32::from_str_radix(&hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .ok_or_else(|| format!("bad escape \\x{hex}"))?
            }
            '^' => {
                let ctl = self.next().ok_or("unterminated \\^")?;
                char::from_u32(u32::from(ctl) % 32).ok_or("bad control escape")?
            }
            other => other,
        })
    }

    pub(super) fn number(&mut self) -> Result<ETerm, String> {
        let mut text = String::new();
        if self.peek() == Some('-') {
            text.push('-');
            self.next();
        }
        let mut float = false;
        while let Some(c) = self.peek() {
            let take = c.is_ascii_alphanumeric()
                || c == '#'
                || c == '_'
                || ((c == '+' || c == '-') && text.ends_with(['e', 'E']) && float);
            if take {
                text.push(c);
                self.next();
            } else if c == '.' && !float && !text.contains('#') {
                // `1.` ends a term; `1.5` is a float.
                let mut ahead = self.chars.clone();
                ahead.next();
                if ahead.next().is_some_and(|(_, d)| d.is_ascii_digit()) {
                    float = true;
                    text.push('.');
                    self.next();
                } else {
                    break;
                }
            } else {
                break;
            }
        }
        let clean = text.replace('_', "");
        if float {
            return clean
                .parse()
                .map(ETerm::Float)
                .map_err(|_| format!("bad number {text}"));
        }
        let parsed = match clean.split_once('#') {
            Some((base, digits)) => {
                let (negative, base) = match base.strip_prefix('-') {
                    Some(b) => (true, b),
                    None => (false, base),
                };
                base.parse()
                    .ok()
                    .filter(|b| (2..=36).contains(b))
                    .and_then(|b| i64::from_str_radix(digits, b).ok())
                    .map(|v| if negative { -v } else { v })
            }
            None => clean.parse().ok(),
        };
        parsed.map(ETerm::Int).ok_or(format!("bad number {text}"))
    }
}
