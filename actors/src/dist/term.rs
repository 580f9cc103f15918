//! Building and reading Erlang terms without the `eetf` boilerplate, and an
//! Erlang-like printer for logs and error messages.
//!
//! Strings: Erlang has two. `charlist` is a list of code points (what
//! `io_lib:format` and most of `kernel` return; on the wire it is either a
//! `STRING_EXT` byte list or a list of integers), `binary` is bytes (Elixir
//! strings). [`term_to_string`] reads both.
//!
//! Received bytes go through [`check_external_terms`] before the decoder
//! (`eetf`) sees them: it panics on some tags, pre-allocates whatever count
//! a header claims and recurses without bound, so a 7-byte message could
//! abort the process. Invariant: bytes that pass the check decode with
//! allocations bounded by their length and at most [`MAX_TERM_DEPTH`] levels
//! of recursion (in the decoder, in [`pretty`] and in `Drop`).

use std::fmt::{self, Write as _};

use erl_dist::term::{Atom, BigInteger, Binary, FixInteger, List, Term, Tuple};

/// `name` as an atom.
pub fn atom(name: &str) -> Term {
    Term::Atom(Atom::from(name))
}

/// A charlist (Erlang "string"): a list of the string's code points.
pub fn charlist(s: &str) -> Term {
    Term::List(List::from(
        s.chars()
            .map(|c| Term::FixInteger(FixInteger::from(c as i32)))
            .collect::<Vec<_>>(),
    ))
}

/// A binary holding the bytes (UTF-8 for a Rust string: an Elixir string).
pub fn binary(bytes: impl AsRef<[u8]>) -> Term {
    Term::Binary(Binary::from(bytes.as_ref().to_vec()))
}

/// A proper list.
pub fn list(elements: Vec<Term>) -> Term {
    Term::List(List::from(elements))
}

/// A tuple.
pub fn tuple(elements: Vec<Term>) -> Term {
    Term::Tuple(Tuple::from(elements))
}

/// An integer, small or big as the value needs.
pub fn int(value: i64) -> Term {
    match i32::try_from(value) {
        Ok(small) => Term::FixInteger(FixInteger::from(small)),
        Err(_) => Term::BigInteger(BigInteger::from(value)),
    }
}

/// The atom's name.
pub fn as_atom(term: &Term) -> Option<&str> {
    match term {
        Term::Atom(a) => Some(&a.name),
        _ => None,
    }
}

/// The integer's value, if it fits an `i64`.
pub fn as_int(term: &Term) -> Option<i64> {
    match term {
        Term::FixInteger(i) => Some(i64::from(i.value)),
        Term::BigInteger(b) => i64::try_from(&b.value).ok(),
        _ => None,
    }
}

/// The tuple's elements.
pub fn as_tuple(term: &Term) -> Option<&[Term]> {
    match term {
        Term::Tuple(t) => Some(&t.elements),
        _ => None,
    }
}

/// The elements of a proper list (a byte list becomes small integers).
pub fn as_list(term: &Term) -> Option<Vec<Term>> {
    match term {
        Term::List(l) => Some(l.elements.clone()),
        Term::ByteList(b) => Some(
            b.bytes
                .iter()
                .map(|&byte| Term::FixInteger(FixInteger::from(byte)))
                .collect(),
        ),
        _ => None,
    }
}

/// The text of a charlist (list of code points) or of a UTF-8 binary.
/// `None` for anything else, including lists with non-characters.
pub fn term_to_string(term: &Term) -> Option<String> {
    match term {
        // STRING_EXT carries code points below 256, i.e. Latin-1.
        Term::ByteList(b) => Some(b.bytes.iter().map(|&byte| char::from(byte)).collect()),
        Term::List(l) => l
            .elements
            .iter()
            .map(|e| match e {
                Term::FixInteger(i) => u32::try_from(i.value).ok().and_then(char::from_u32),
                _ => None,
            })
            .collect(),
        Term::Binary(b) => String::from_utf8(b.bytes.clone()).ok(),
        _ => None,
    }
}

/// Renders a term the way Erlang's `~p` would, roughly: bare atoms,
/// strings for printable charlists and binaries. For logs and errors.
pub fn pretty(term: &Term) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = write_term(&mut out, term);
    out
}

fn write_term(out: &mut String, term: &Term) -> fmt::Result {
    match term {
        Term::Atom(a) => write_atom(out, &a.name),
        Term::FixInteger(i) => write!(out, "{}", i.value),
        Term::BigInteger(b) => write!(out, "{}", b.value),
        Term::Float(f) => write!(out, "{:?}", f.value),
        Term::Pid(p) => write!(out, "<{}.{}.{}>", p.node.name, p.id, p.serial),
        Term::Port(p) => write!(out, "#Port<{}.{}>", p.node.name, p.id),
        Term::Reference(r) => {
            write!(out, "#Ref<{}", r.node.name)?;
            for n in &r.id {
                write!(out, ".{n}")?;
            }
            out.write_char('>')
        }
        Term::ExternalFun(f) => {
            write!(out, "fun {}:{}/{}", f.module.name, f.function.name, f.arity)
        }
        Term::InternalFun(_) => out.write_str("#Fun<>"),
        Term::Binary(b) => match std::str::from_utf8(&b.bytes) {
            Ok(s) if s.chars().all(is_printable) => {
                out.write_str("<<")?;
                write_quoted(out, s, '"')?;
                out.write_str(">>")
            }
            _ => {
                out.write_str("<<")?;
                write_joined(out, b.bytes.iter(), |out, byte| write!(out, "{byte}"))?;
                out.write_str(">>")
            }
        },
        Term::BitBinary(b) => write!(out, "{b}"),
        Term::ByteList(_) | Term::List(_) => match term_to_string(term) {
            Some(s) if !s.is_empty() && s.chars().all(is_printable) => write_quoted(out, &s, '"'),
            _ => {
                out.write_char('[')?;
                if let Some(elements) = as_list(term) {
                    write_joined(out, elements.iter(), write_term)?
                }
                out.write_char(']')
            }
        },
        Term::ImproperList(l) => {
            out.write_char('[')?;
            write_joined(out, l.elements.iter(), write_term)?;
            out.write_char('|')?;
            write_term(out, &l.last)?;
            out.write_char(']')
        }
        Term::Tuple(t) => {
            out.write_char('{')?;
            write_joined(out, t.elements.iter(), write_term)?;
            out.write_char('}')
        }
        Term::Map(m) => {
            out.write_str("#{")?;
            write_joined(out, m.map.iter(), |out, (k, v)| {
                write_term(out, k)?;
                out.write_str(" => ")?;
                write_term(out, v)
            })?;
            out.write_char('}')
        }
    }
}

fn write_joined<I, T>(
    out: &mut String,
    items: I,
    mut each: impl FnMut(&mut String, T) -> fmt::Result,
) -> fmt::Result
where
    I: Iterator<Item = T>,
{
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        each(out, item)?;
    }
    Ok(())
}

fn write_atom(out: &mut String, name: &str) -> fmt::Result {
    let mut chars = name.chars();
    let bare = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '@');
    if bare {
        out.write_str(name)
    } else {
        write_quoted(out, name, '\'')
    }
}

fn write_quoted(out: &mut String, s: &str, quote: char) -> fmt::Result {
    out.write_char(quote)?;
    for c in s.chars() {
        match c {
            '\n' => out.write_str("\\n")?,
            '\t' => out.write_str("\\t")?,
            '\r' => out.write_str("\\r")?,
            '\\' => out.write_str("\\\\")?,
            c if c == quote => {
                out.write_char('\\')?;
                out.write_char(c)?;
            }
            c => out.write_char(c)?,
        }
    }
    out.write_char(quote)
}

fn is_printable(c: char) -> bool {
    matches!(c, '\n' | '\t' | '\r') || (!c.is_control() && c != '\u{7f}')
}

/// Deepest nesting of lists, tuples, maps and funs accepted from a node.
/// Real control messages and rpc replies are a few levels deep.
pub const MAX_TERM_DEPTH: usize = 128;

/// Why received bytes are not a safe sequence of external terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TermCheckError {
    #[error("byte {offset}: expected the version byte 131, found {found}")]
    NoVersion { offset: usize, found: u8 },
    #[error("byte {offset}: term truncated")]
    Truncated { offset: usize },
    #[error("byte {offset}: unsupported tag {tag}")]
    UnsupportedTag { offset: usize, tag: u8 },
    #[error("byte {offset}: header claims {count} elements, only {left} bytes left")]
    CountTooLarge {
        offset: usize,
        count: u64,
        left: usize,
    },
    #[error("byte {offset}: bit binary with {bits} bits in its last byte")]
    BadBits { offset: usize, bits: u8 },
    #[error("byte {offset}: nested deeper than {max}")]
    TooDeep { offset: usize, max: usize },
}

/// Checks that `bytes` is one or more whole external terms (each `131`
/// then a term) that the decoder can take safely: known tags only (no
/// compressed terms, distribution headers or atom cache references, which
/// deployex never negotiates), every length within the bytes left, bit
/// counts in range, nesting within [`MAX_TERM_DEPTH`]. Iterative: the
/// check itself never recurses.
pub fn check_external_terms(bytes: &[u8]) -> Result<(), TermCheckError> {
    let mut cur = Cursor { bytes, pos: 0 };
    if bytes.is_empty() {
        return Err(TermCheckError::Truncated { offset: 0 });
    }
    while cur.pos < bytes.len() {
        let offset = cur.pos;
        let version = cur.u8()?;
        if version != 131 {
            return Err(TermCheckError::NoVersion {
                offset,
                found: version,
            });
        }
        check_one_term(&mut cur)?;
    }
    Ok(())
}

/// What is still to be read of the term being checked.
enum Pending {
    /// This many terms (one nesting level).
    Terms(u64),
    /// This many raw bytes (fields that follow a node atom).
    Bytes(usize),
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], TermCheckError> {
        if n > self.left() {
            return Err(TermCheckError::Truncated { offset: self.pos });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, TermCheckError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<usize, TermCheckError> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u32(&mut self) -> Result<u64, TermCheckError> {
        let b = self.take(4)?;
        Ok(u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    }

    /// A byte length read from the header: must fit in what is left.
    fn skip_u32_len(&mut self) -> Result<(), TermCheckError> {
        let n = self.u32()?;
        let n = usize::try_from(n).map_err(|_| TermCheckError::Truncated { offset: self.pos })?;
        self.take(n).map(|_| ())
    }

    /// A count of terms that follow: each takes at least one byte, which
    /// bounds what the decoder pre-allocates.
    fn count(&self, offset: usize, count: u64) -> Result<u64, TermCheckError> {
        if count > self.left() as u64 {
            return Err(TermCheckError::CountTooLarge {
                offset,
                count,
                left: self.left(),
            });
        }
        Ok(count)
    }
}

fn check_one_term(cur: &mut Cursor<'_>) -> Result<(), TermCheckError> {
    let mut stack = vec![Pending::Terms(1)];
    while let Some(top) = stack.last_mut() {
        match top {
            Pending::Bytes(n) => {
                let n = *n;
                stack.pop();
                cur.take(n)?;
                continue;
            }
            Pending::Terms(0) => {
                stack.pop();
                continue;
            }
            Pending::Terms(n) => *n -= 1,
        }
        let offset = cur.pos;
        let tag = cur.u8()?;
        // Terms inside this one, and raw bytes that come after them.
        let (children, after): (u64, usize) = match tag {
            97 => (0, 1),                             // SMALL_INTEGER
            98 => (0, 4),                             // INTEGER
            70 => (0, 8),                             // NEW_FLOAT
            99 => (0, 31),                            // FLOAT
            106 => (0, 0),                            // NIL
            100 | 118 | 107 => (0, cur.u16()?),       // ATOM, ATOM_UTF8, STRING
            115 | 119 => (0, usize::from(cur.u8()?)), // SMALL_ATOM(_UTF8)
            109 => {
                // BINARY
                cur.skip_u32_len()?;
                (0, 0)
            }
            77 => {
                // BIT_BINARY: the decoder shifts by 8 - bits.
                let len = cur.u32()?;
                let bits = cur.u8()?;
                if len > 0 && !(1..=8).contains(&bits) {
                    return Err(TermCheckError::BadBits { offset, bits });
                }
                let len = usize::try_from(len)
                    .map_err(|_| TermCheckError::Truncated { offset: cur.pos })?;
                (0, len)
            }
            110 => {
                // SMALL_BIG: n, sign, n bytes
                let n = usize::from(cur.u8()?);
                (0, 1 + n)
            }
            111 => {
                // LARGE_BIG: n, sign, n bytes
                let n = cur.u32()?;
                cur.take(1)?;
                let n = usize::try_from(n)
                    .map_err(|_| TermCheckError::Truncated { offset: cur.pos })?;
                (0, n)
            }
            104 => {
                let n = u64::from(cur.u8()?);
                (cur.count(offset, n)?, 0)
            }
            105 => {
                let n = cur.u32()?;
                (cur.count(offset, n)?, 0)
            }
            108 => {
                // LIST: n elements and a tail
                let n = cur.u32()?;
                (cur.count(offset, n + 1)?, 0)
            }
            116 => {
                let n = cur.u32()?;
                (cur.count(offset, 2 * n)?, 0)
            }
            113 => (3, 0),  // EXPORT: module, function, arity
            103 => (1, 9),  // PID: node, id, serial, creation(1)
            88 => (1, 12),  // NEW_PID: node, id, serial, creation(4)
            101 => (1, 5),  // REFERENCE: node, id, creation(1)
            102 => (1, 5),  // PORT: node, id, creation(1)
            89 => (1, 8),   // NEW_PORT: node, id, creation(4)
            120 => (1, 12), // V4_PORT: node, id(8), creation(4)
            114 | 90 => {
                // NEW_REFERENCE / NEWER_REFERENCE: len, node, creation, ids
                let n = cur.u16()?;
                (1, if tag == 114 { 1 } else { 4 } + 4 * n)
            }
            117 => {
                // FUN: num_free, pid, module, index, uniq, free vars
                let n = cur.u32()?;
                (cur.count(offset, 4 + n)?, 0)
            }
            112 => {
                // NEW_FUN: size, arity, uniq(16), index, num_free, then
                // module, old_index, old_uniq, pid, free vars
                cur.take(4 + 1 + 16 + 4)?;
                let n = cur.u32()?;
                (cur.count(offset, 4 + n)?, 0)
            }
            _ => return Err(TermCheckError::UnsupportedTag { offset, tag }),
        };
        if children == 0 {
            if after > 0 {
                cur.take(after)?;
            }
            continue;
        }
        // Raw fields follow the node atom: read the atom first.
        if after > 0 {
            stack.push(Pending::Bytes(after));
        }
        stack.push(Pending::Terms(children));
        let depth = stack
            .iter()
            .filter(|p| matches!(p, Pending::Terms(_)))
            .count();
        if depth > MAX_TERM_DEPTH + 1 {
            return Err(TermCheckError::TooDeep {
                offset,
                max: MAX_TERM_DEPTH,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip_through_charlists_and_binaries() {
        assert_eq!(
            term_to_string(&charlist("héllo €")).as_deref(),
            Some("héllo €")
        );
        assert_eq!(
            term_to_string(&binary("héllo €")).as_deref(),
            Some("héllo €")
        );
        assert_eq!(term_to_string(&list(vec![])).as_deref(), Some(""));
        assert_eq!(term_to_string(&list(vec![atom("a")])), None);
        assert_eq!(term_to_string(&binary([0xff, 0xfe])), None);
    }

    #[test]
    fn charlists_survive_the_wire_encoding() {
        // Latin-1 charlists go out as STRING_EXT and come back as ByteList.
        for s in ["abc", "é", "€uro"] {
            let mut bytes = Vec::new();
            charlist(s).encode(&mut bytes).unwrap();
            let decoded = Term::decode(bytes.as_slice()).unwrap();
            assert_eq!(term_to_string(&decoded).as_deref(), Some(s), "{s}");
        }
    }

    #[test]
    fn ints_pick_their_size() {
        assert!(matches!(int(5), Term::FixInteger(_)));
        assert!(matches!(int(1 << 40), Term::BigInteger(_)));
        assert_eq!(as_int(&int(1 << 40)), Some(1 << 40));
        assert_eq!(as_int(&int(-7)), Some(-7));
        assert_eq!(as_int(&atom("x")), None);
    }

    #[test]
    fn pretty_looks_like_erlang() {
        let t = tuple(vec![
            atom("ok"),
            atom("Hello World"),
            charlist("a\"b"),
            binary("bin"),
            binary([1, 2]),
            list(vec![int(1), int(300)]),
            list(vec![]),
        ]);
        assert_eq!(
            pretty(&t),
            r#"{ok,'Hello World',"a\"b",<<"bin">>,<<1,2>>,[1,300],[]}"#
        );
    }

    #[test]
    fn accessors_reject_other_shapes() {
        assert_eq!(as_atom(&atom("node@h")), Some("node@h"));
        assert_eq!(as_atom(&int(1)), None);
        assert_eq!(as_tuple(&tuple(vec![int(1)])).map(<[Term]>::len), Some(1));
        assert!(as_tuple(&list(vec![])).is_none());
        assert_eq!(as_list(&charlist("ab")).map(|v| v.len()), Some(2));
    }

    fn encoded(terms: &[Term]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for t in terms {
            t.encode(&mut bytes).unwrap();
        }
        bytes
    }

    #[test]
    fn the_check_accepts_what_nodes_send() {
        use erl_dist::term::{Map, Pid, Reference};
        let pid = Term::Pid(Pid::new("n@h", 1, 2, 3));
        let reference = Term::Reference(Box::new(Reference {
            node: Atom::from("n@h"),
            id: vec![1, 2, 3],
            creation: 7,
        }));
        let map = Term::Map(Map::from([(atom("k"), binary("v"))]));
        let mut deep = atom("leaf");
        for _ in 0..MAX_TERM_DEPTH - 1 {
            deep = list(vec![deep]);
        }
        let t = tuple(vec![
            pid,
            reference,
            map,
            int(1 << 40),
            Term::Float(erl_dist::term::Float::try_from(1.5).unwrap()),
            charlist("abc"),
            charlist("€"),
            binary([0u8; 300]),
            list(vec![]),
            deep,
        ]);
        // Control message and payload: two terms back to back.
        let bytes = encoded(&[tuple(vec![int(2), atom(""), atom("rex")]), t.clone()]);
        assert_eq!(check_external_terms(&bytes), Ok(()));
        assert_eq!(
            Term::decode(&bytes[..]).unwrap(),
            tuple(vec![int(2), atom(""), atom("rex")])
        );
    }

    #[test]
    fn the_check_refuses_what_would_crash_the_decoder() {
        let e = |bytes: &[u8]| check_external_terms(bytes).unwrap_err();
        assert!(matches!(e(&[]), TermCheckError::Truncated { .. }));
        assert!(matches!(
            e(&[130, 106]),
            TermCheckError::NoVersion { found: 130, .. }
        ));
        // Counts beyond the bytes: list, large tuple, map, fun.
        assert!(matches!(
            e(&[131, 108, 255, 255, 255, 255, 106]),
            TermCheckError::CountTooLarge { .. }
        ));
        assert!(matches!(
            e(&[131, 105, 0, 1, 0, 0, 106]),
            TermCheckError::CountTooLarge { .. }
        ));
        assert!(matches!(
            e(&[131, 116, 0, 0, 0, 9, 106, 106]),
            TermCheckError::CountTooLarge { .. }
        ));
        // Byte lengths beyond the bytes: binary, big integer, atom.
        assert!(matches!(
            e(&[131, 109, 255, 255, 255, 255, 1]),
            TermCheckError::Truncated { .. }
        ));
        assert!(matches!(
            e(&[131, 111, 255, 255, 255, 255, 0, 1]),
            TermCheckError::Truncated { .. }
        ));
        assert!(matches!(
            e(&[131, 118, 0, 9, b'a']),
            TermCheckError::Truncated { .. }
        ));
        // Tags the decoder panics on or that deployex never negotiates.
        for tag in [80, 68, 82, 1] {
            assert!(
                matches!(e(&[131, tag, 0, 0, 0, 0]), TermCheckError::UnsupportedTag { tag: t, .. } if t == tag),
                "{tag}"
            );
        }
        // A bit binary whose shift would overflow.
        assert!(matches!(
            e(&[131, 77, 0, 0, 0, 1, 0, 255]),
            TermCheckError::BadBits { bits: 0, .. }
        ));
        // Nesting: one level too deep.
        let mut deep = vec![131];
        for _ in 0..=MAX_TERM_DEPTH {
            deep.extend_from_slice(&[108, 0, 0, 0, 1]);
        }
        deep.extend(std::iter::repeat_n(106, MAX_TERM_DEPTH + 2));
        assert!(matches!(e(&deep), TermCheckError::TooDeep { .. }));
        // A trailing partial term.
        let mut two = encoded(&[atom("ok")]);
        two.extend_from_slice(&[131, 104, 1, 97]);
        assert!(matches!(e(&two), TermCheckError::Truncated { .. }));
    }
}
