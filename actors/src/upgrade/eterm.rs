//! A small parser of Erlang term text (`.appup`, `relup`, `.rel` files):
//! enough of the syntax for release files, with limits on depth and size.

use std::fmt;

/// Why a text is not a term this parser reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ParseError {
    #[error("missing '.' after the term")]
    MissingDot,
    #[error("expected '.' after the term, found {0:?}")]
    AfterTerm(char),
    #[error("expected {want:?}, found {found:?}")]
    Expected { want: char, found: char },
    #[error("expected {want:?}, found the end")]
    ExpectedAtEnd { want: char },
    #[error("unexpected end of file")]
    End,
    #[error("unexpected end after '$'")]
    EndAfterDollar,
    #[error("{0} is not a byte")]
    NotAByte(i64),
    #[error("unsupported binary segment {0}")]
    BinarySegment(String),
    #[error("unexpected character {0:?}")]
    Unexpected(char),
    #[error("improper lists are not supported")]
    ImproperList,
    #[error("expected ',' or {close:?}, found {found:?}")]
    Separator { close: char, found: char },
    #[error("missing {0:?}")]
    Missing(char),
    /// An unterminated quote or escape, as it starts (`"`, `\x{`...).
    #[error("unterminated {0}")]
    Unterminated(String),
    #[error("bad escape {0}")]
    BadEscape(String),
    #[error("bad number {0}")]
    BadNumber(String),
}

/// Why a release file's text gives no answer: not a term, or not the term
/// its kind of file holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TermError {
    #[error(transparent)]
    Syntax(#[from] ParseError),
    /// The term parsed, but its shape is not the file's (`found` is the
    /// part that did not fit).
    #[error("expected {expected}, found {found}")]
    Shape {
        expected: &'static str,
        found: String,
    },
}

impl TermError {
    pub(super) fn shape(expected: &'static str, found: impl fmt::Debug) -> TermError {
        TermError::Shape {
            expected,
            found: format!("{found:?}"),
        }
    }
}

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
    pub(super) fn parse_file(text: &str) -> Result<ETerm, ParseError> {
        let mut p = Parser {
            chars: text.char_indices().peekable(),
        };
        let term = p.term()?;
        p.skip_blank();
        match p.next() {
            Some('.') => Ok(term),
            Some(c) => Err(ParseError::AfterTerm(c)),
            None => Err(ParseError::MissingDot),
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

    pub(super) fn expect(&mut self, want: char) -> Result<(), ParseError> {
        self.skip_blank();
        match self.next() {
            Some(c) if c == want => Ok(()),
            Some(found) => Err(ParseError::Expected { want, found }),
            None => Err(ParseError::ExpectedAtEnd { want }),
        }
    }

    pub(super) fn term(&mut self) -> Result<ETerm, ParseError> {
        self.skip_blank();
        match self.peek() {
            None => Err(ParseError::End),
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
                            Err(_) => return Err(ParseError::NotAByte(i)),
                        },
                        other => return Err(ParseError::BinarySegment(format!("{other:?}"))),
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
                    None => return Err(ParseError::EndAfterDollar),
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
            Some(c) => Err(ParseError::Unexpected(c)),
        }
    }

    /// Comma-separated terms up to `close` (consumed).
    pub(super) fn elements(&mut self, close: char) -> Result<Vec<ETerm>, ParseError> {
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
                Some('|') => return Err(ParseError::ImproperList),
                Some(found) => return Err(ParseError::Separator { close, found }),
                None => return Err(ParseError::Missing(close)),
            }
        }
    }

    pub(super) fn quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(ParseError::Unterminated(format!("{quote}...{quote}"))),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => out.push(self.escape()?),
                Some(c) => out.push(c),
            }
        }
    }

    /// The character after a backslash.
    pub(super) fn escape(&mut self) -> Result<char, ParseError> {
        let c = self
            .next()
            .ok_or_else(|| ParseError::Unterminated("escape".to_owned()))?;
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
                char::from_u32(code).ok_or_else(|| ParseError::BadEscape(format!("\\{code:o}")))?
            }
            'x' => {
                let mut hex = String::new();
                if self.peek() == Some('{') {
                    self.next();
                    loop {
                        match self.next() {
                            Some('}') => break,
                            Some(d) => hex.push(d),
                            None => return Err(ParseError::Unterminated("\\x{...}".to_owned())),
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
                    .ok_or_else(|| ParseError::BadEscape(format!("\\x{hex}")))?
            }
            '^' => {
                let ctl = self
                    .next()
                    .ok_or_else(|| ParseError::Unterminated("\\^".to_owned()))?;
                char::from_u32(u32::from(ctl) % 32)
                    .ok_or_else(|| ParseError::BadEscape(format!("\\^{ctl}")))?
            }
            other => other,
        })
    }

    pub(super) fn number(&mut self) -> Result<ETerm, ParseError> {
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
                .map_err(|_| ParseError::BadNumber(text));
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
        parsed.map(ETerm::Int).ok_or(ParseError::BadNumber(text))
    }
}
