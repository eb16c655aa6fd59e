//! Telling the script's exit status from `tart exec`'s own failures.
//!
//! `tart exec` exits with the guest command's status, but also with 1 when it cannot reach
//! the guest agent or the agent's stream breaks mid-command, and with 0 when the stream ends
//! without an exit event. So the remote side reports the script's status itself: after the
//! stage's shell ends, a parent shell writes one status record to stderr, marked with a
//! per-stage nonce. The record is taken out of the stream before it reaches the job log. A
//! record whose status `tart exec` then exits with is the script's outcome; no record means
//! Tart failed, and its own message is the last line it wrote to stderr.

/// The record's first byte, ASCII "record separator": never part of ordinary text output.
const START: u8 = 0x1e;
/// How much of the forwarded stderr is kept to find Tart's own message.
const TAIL: usize = 2048;

/// A per-stage record marker and the remote command that writes it.
pub struct StatusRecord {
    marker: Vec<u8>,
}

impl StatusRecord {
    pub fn new() -> StatusRecord {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let nonce = format!("{:x}{:x}", std::process::id(), nanos);
        let mut marker = vec![START];
        marker.extend_from_slice(format!("tartdrv-status {nonce} ").as_bytes());
        StatusRecord { marker }
    }

    /// `sh -c` arguments that run `inner` in a child shell (so that the stage's PID file
    /// names the stage's own shell, as over SSH), then write the record and exit with the
    /// same status.
    pub fn wrap(&self, inner: &str) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.marker[1..]).into_owned();
        vec![
            "sh".into(),
            "-c".into(),
            format!("sh -c \"$1\"; s=$?; printf '\\036{text}%d\\n' \"$s\" >&2; exit \"$s\""),
            "sh".into(),
            inner.into(),
        ]
    }

    pub fn filter(&self) -> StatusFilter {
        StatusFilter {
            marker: self.marker.clone(),
            pending: Vec::new(),
            status: None,
            tail: Vec::new(),
        }
    }
}

/// Passes stderr through, minus the status record, which it remembers.
pub struct StatusFilter {
    marker: Vec<u8>,
    pending: Vec<u8>,
    status: Option<i32>,
    tail: Vec<u8>,
}

impl StatusFilter {
    /// Takes the next chunk of stderr; returns what may go to the job log now.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            let Some(start) = self.pending.iter().position(|&b| b == START) else {
                out.append(&mut self.pending);
                break;
            };
            out.extend(self.pending.drain(..start));
            let known = self.pending.len().min(self.marker.len());
            if self.pending[..known] != self.marker[..known] {
                // A separator byte of the script's own: pass it on.
                out.push(self.pending.remove(0));
                continue;
            }
            if known < self.marker.len() {
                break; // maybe a record: wait for more
            }
            let Some(end) = self.pending.iter().position(|&b| b == b'\n') else {
                break;
            };
            let digits = String::from_utf8_lossy(&self.pending[self.marker.len()..end]);
            self.status = digits.trim().parse().ok();
            self.pending.drain(..=end);
        }
        self.remember(&out);
        out
    }

    /// The end of the stream: whatever was held back, since it was no record.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        self.remember(&rest);
        rest
    }

    /// The script's exit status, if the record came through.
    pub fn status(&self) -> Option<i32> {
        self.status
    }

    /// The last line written to stderr: Tart's own message when it failed.
    pub fn last_line(&self) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        let line = line.trim();
        line.strip_prefix("Error: ").unwrap_or(line).to_string()
    }

    fn remember(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if self.tail.len() > TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }
}

impl super::relay::ErrFilter for StatusFilter {
    fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        StatusFilter::feed(self, chunk)
    }
    fn finish(&mut self) -> Vec<u8> {
        StatusFilter::finish(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(r: &StatusRecord, code: i32) -> Vec<u8> {
        let mut v = r.marker.clone();
        v.extend_from_slice(format!("{code}\n").as_bytes());
        v
    }

    #[test]
    fn the_record_is_taken_out_and_its_status_kept() {
        let r = StatusRecord::new();
        let mut f = r.filter();
        let mut input = b"warning: x\npartial".to_vec();
        input.extend(record(&r, 3));
        input.extend_from_slice(b"late\n");
        let mut out = Vec::new();
        // Byte by byte: a record split across reads is still found.
        for b in &input {
            out.extend(f.feed(std::slice::from_ref(b)));
        }
        out.extend(f.finish());
        assert_eq!(out, b"warning: x\npartiallate\n");
        assert_eq!(f.status(), Some(3));
    }

    #[test]
    fn without_a_record_the_status_is_unknown_and_tarts_message_is_the_last_line() {
        let r = StatusRecord::new();
        let mut f = r.filter();
        let text = b"script output\nError: unavailable (14): Transport became inactive\n";
        let out = f.feed(text);
        assert_eq!(f.status(), None);
        assert_eq!(out, text);
        assert_eq!(f.last_line(), "unavailable (14): Transport became inactive");
    }

    #[test]
    fn a_record_with_another_nonce_is_ordinary_output() {
        let mine = StatusRecord::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let forged = record(&StatusRecord::new(), 0);
        let mut f = mine.filter();
        let mut out = f.feed(&forged);
        out.extend(f.finish());
        assert_eq!(out, forged);
        assert_eq!(f.status(), None);
    }

    #[test]
    fn the_wrapper_exits_with_the_scripts_status_and_writes_the_record() {
        let r = StatusRecord::new();
        let args = r.wrap("echo out; exit 7");
        let done = std::process::Command::new(&args[0])
            .args(&args[1..])
            .output()
            .unwrap();
        assert_eq!(done.status.code(), Some(7));
        assert_eq!(done.stdout, b"out\n");
        let mut f = r.filter();
        let mut rest = f.feed(&done.stderr);
        rest.extend(f.finish());
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        assert_eq!(f.status(), Some(7));
    }
}
