//! A parser for the pgoutput logical decoding protocol (version 1), as
//! returned by `pg_logical_slot_peek_binary_changes(slot, …, 'proto_version',
//! '1', 'publication_names', …)`: Begin, Commit, Origin, Relation, Type,
//! Insert, Update, Delete, Truncate, Message. Tuple values are text.

use std::fmt;

/// A position in the WAL (`pg_lsn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses `X/Y` (hex halves), the text form of `pg_lsn`.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value the update did not carry.
    Unchanged,
    Text(String),
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelColumn {
    pub name: String,
    pub type_oid: u32,
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
    },
    Origin {
        name: String,
    },
    Relation {
        oid: u32,
        namespace: String,
        name: String,
        columns: Vec<RelColumn>,
    },
    Insert {
        rel: u32,
        new: Vec<Datum>,
    },
    Update {
        rel: u32,
        old: Option<Vec<Datum>>,
        new: Vec<Datum>,
    },
    Delete {
        rel: u32,
        old: Vec<Datum>,
    },
    Truncate {
        rels: Vec<u32>,
    },
    /// Type, logical decoding message, and anything this parser skips.
    Other(u8),
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct ParseError(String);

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        if self.pos + n > self.buf.len() {
            return Err(ParseError(format!(
                "needs {n} bytes at offset {}, has {}",
                self.pos,
                self.buf.len() - self.pos
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, ParseError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, ParseError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ParseError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, ParseError> {
        Ok(self.u32()? as i32)
    }
    fn u64(&mut self) -> Result<u64, ParseError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn cstr(&mut self) -> Result<String, ParseError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| ParseError("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, ParseError> {
        let n = self.i16()?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Datum::Null,
                b'u' => Datum::Unchanged,
                b't' => {
                    let len = self.i32()?;
                    if len < 0 {
                        return Err(ParseError(format!("negative value length {len}")));
                    }
                    let bytes = self.take(len as usize)?;
                    Datum::Text(String::from_utf8_lossy(bytes).into_owned())
                }
                b'b' => return Err(ParseError("binary tuple values are not requested".into())),
                k => return Err(ParseError(format!("unknown tuple value kind {k:#x}"))),
            });
        }
        Ok(out)
    }
}

/// Parses one pgoutput message.
pub fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    let mut r = Reader { buf, pos: 0 };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => {
            let final_lsn = Lsn(r.u64()?);
            let _commit_ts = r.u64()?;
            let xid = r.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8()?;
            let commit_lsn = Lsn(r.u64()?);
            let end_lsn = Lsn(r.u64()?);
            let _ts = r.u64()?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'O' => {
            let _lsn = r.u64()?;
            Message::Origin { name: r.cstr()? }
        }
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.cstr()?;
            let name = r.cstr()?;
            let _replident = r.u8()?;
            let n = r.i16()?;
            let mut columns = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let _typmod = r.i32()?;
                columns.push(RelColumn { name, type_oid });
            }
            Message::Relation {
                oid,
                namespace,
                name,
                columns,
            }
        }
        b'I' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    rel,
                    new: r.tuple()?,
                },
                k => return Err(ParseError(format!("insert: expected 'N', got {k:#x}"))),
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut k = r.u8()?;
            if k == b'K' || k == b'O' {
                old = Some(r.tuple()?);
                k = r.u8()?;
            }
            if k != b'N' {
                return Err(ParseError(format!("update: expected 'N', got {k:#x}")));
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete {
                    rel,
                    old: r.tuple()?,
                },
                k => {
                    return Err(ParseError(format!(
                        "delete: expected 'K' or 'O', got {k:#x}"
                    )))
                }
            }
        }
        b'T' => {
            let n = r.i32()?;
            let _options = r.u8()?;
            let mut rels = Vec::with_capacity(n.max(0) as usize);
            for _ in 0..n {
                rels.push(r.u32()?);
            }
            Message::Truncate { rels }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        let l = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(l.0, (0x16 << 32) | 0xB374D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/0").unwrap() < l);
        assert!(Lsn::parse("nope").is_none());
    }

    #[test]
    fn parses_insert_with_nulls_and_text() {
        let mut b = vec![b'I'];
        b.extend(16384u32.to_be_bytes());
        b.push(b'N');
        b.extend(3i16.to_be_bytes());
        b.push(b'n');
        b.push(b't');
        b.extend(2i32.to_be_bytes());
        b.extend(b"hi");
        b.push(b'u');
        assert_eq!(
            parse(&b).unwrap(),
            Message::Insert {
                rel: 16384,
                new: vec![Datum::Null, Datum::Text("hi".into()), Datum::Unchanged]
            }
        );
        b.truncate(b.len() - 3);
        assert!(parse(&b).is_err());
    }
}
