//! The check received bytes pass before the decoder (`eetf`) sees them:
//! see the invariant in the parent module.

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
    use crate::dist::term::{atom, binary, charlist, int, list, tuple};
    use erl_dist::term::{Atom, Term};

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
