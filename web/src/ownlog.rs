//! deployex's own log in memory: the last [`OwnLog::capacity`] lines that
//! its tracing subscriber wrote, for the dashboard's "Logs" link
//! (`/instances/0/logs/{stream}`) when deployex logs to stdout/journald
//! rather than to files.
//!
//! Invariants: bounded: at most `capacity` lines of at most
//! [`MAX_LINE_BYTES`] each are kept, whatever is logged; writing never
//! blocks on a reader for longer than a `VecDeque` push.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

/// Longer lines are cut (with `…`).
pub const MAX_LINE_BYTES: usize = 1024;

/// The ring of recent lines.
pub struct OwnLog {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl std::fmt::Debug for OwnLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnLog")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl OwnLog {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds one line (cut to [`MAX_LINE_BYTES`]), dropping the oldest.
    pub fn push(&self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        let line = if line.len() > MAX_LINE_BYTES {
            let mut end = MAX_LINE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &line[..end])
        } else {
            line.to_owned()
        };
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The last `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// A writer for one event (a `tracing_subscriber` `MakeWriter` is any
    /// `Fn() -> impl io::Write`: `move || log.writer()`).
    pub fn writer(self: &Arc<Self>) -> OwnLogWriter {
        OwnLogWriter {
            log: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// Collects one event's bytes; its lines go into the ring when dropped.
pub struct OwnLogWriter {
    log: Arc<OwnLog>,
    buf: Vec<u8>,
}

impl io::Write for OwnLogWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // An event longer than all the lines kept is cut here already.
        let room = (MAX_LINE_BYTES * 4).saturating_sub(self.buf.len());
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for OwnLogWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            self.log.push(line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn keeps_the_last_lines_bounded() {
        let log = OwnLog::new(3);
        for i in 0..10 {
            let mut w = log.writer();
            writeln!(w, "line {i}").unwrap();
        }
        assert_eq!(log.tail(10), vec!["line 7", "line 8", "line 9"]);
        assert_eq!(log.tail(1), vec!["line 9"]);
        let mut w = log.writer();
        w.write_all("é".repeat(5000).as_bytes()).unwrap();
        drop(w);
        let last = log.tail(1).pop().unwrap();
        assert!(last.len() <= MAX_LINE_BYTES + "…".len(), "{}", last.len());
    }
}
