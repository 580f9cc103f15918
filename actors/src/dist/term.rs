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

mod check;
pub use check::{MAX_TERM_DEPTH, TermCheckError, check_external_terms};

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
}
