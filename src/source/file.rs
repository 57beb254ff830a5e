//! Files: NDJSON (one entry a line), a JSON array (`gcloud logging read --format=json`), one
//! pretty-printed document, or Pub/Sub message dumps — read from a path or stdin.
//!
//! NDJSON streams line by line with one reused buffer, so memory stays bounded whatever the
//! file's size; a line longer than [`MAX_ENTRY_BYTES`] is skipped without being held. A JSON
//! array is one document, read whole and processed in timestamp order (gcloud prints newest
//! first), as CONTRACT section 1 says.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use schedwatch_sinks::Alert;
use serde_json::value::RawValue;

use crate::decode::{Decoded, SkipReason, MAX_ENTRY_BYTES};
use crate::pipeline::Pipeline;

/// Read buffer: large enough that a syscall serves hundreds of entries.
const READ_BUFFER: usize = 256 * 1024;

/// Why a file could not be read at all (a bad entry inside one is counted, not an error).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Open or read failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path (`-` for stdin).
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The alert handler failed (for example stdout closed).
    #[error("cannot write alerts: {0}")]
    Output(io::Error),
}

/// Feeds one file (or `-`, stdin) through the pipeline, handing each batch of alerts to
/// `emit` as soon as the entry that caused it is processed.
pub fn replay(
    path: &Path,
    pipeline: &mut Pipeline,
    emit: &mut dyn FnMut(&[Alert]) -> io::Result<()>,
) -> Result<(), FileError> {
    let name = path.display().to_string();
    let io_err = |source| FileError::Io {
        path: name.clone(),
        source,
    };
    let (reader, size): (Box<dyn Read>, Option<u64>) = if name == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path).map_err(io_err)?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let progress = progress_bar(size, &name);
    let mut lines = Lines::new(progress.wrap_read(reader));
    let mut out = Vec::new();
    let mut flush = |out: &mut Vec<Alert>| -> Result<(), FileError> {
        if !out.is_empty() {
            emit(out).map_err(FileError::Output)?;
            out.clear();
        }
        Ok(())
    };

    lines.skip_bom().map_err(io_err)?;
    let result = match lines.first_byte().map_err(io_err)? {
        None => Ok(()),
        Some(b'[') => {
            let whole = lines.rest(&[]).map_err(io_err)?;
            document(&whole, pipeline, &mut out, &mut flush)
        }
        Some(_) => {
            let mut first_line = true;
            loop {
                match lines.next().map_err(io_err)? {
                    Next::Eof => break Ok(()),
                    Next::TooLong => pipeline.skip(SkipReason::TooLarge),
                    // Blank lines are not entries, and do not end the "first line" either.
                    Next::Line(line) if is_blank(line) => continue,
                    // A first line that is not a whole JSON value starts a pretty-printed
                    // document: read it whole.
                    Next::Line(line)
                        if first_line
                            && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() =>
                    {
                        let line = line.to_vec();
                        let whole = lines.rest(&line).map_err(io_err)?;
                        break document(&whole, pipeline, &mut out, &mut flush);
                    }
                    Next::Line(line) => {
                        pipeline.process_item(line, &mut out);
                        flush(&mut out)?;
                    }
                }
                first_line = false;
            }
        }
    };
    progress.finish_and_clear();
    result
}

/// A whole document: an array of items (processed in timestamp order), one or several
/// concatenated objects, or — when it is not valid JSON as a whole — lines, each on its own.
fn document(
    whole: &[u8],
    pipeline: &mut Pipeline,
    out: &mut Vec<Alert>,
    flush: &mut dyn FnMut(&mut Vec<Alert>) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let values: Result<Vec<&RawValue>, _> = serde_json::Deserializer::from_slice(whole)
        .into_iter::<&RawValue>()
        .collect();
    let Ok(values) = values else {
        for line in whole.split(|&b| b == b'\n').filter(|l| !is_blank(l)) {
            if line.len() > MAX_ENTRY_BYTES {
                pipeline.skip(SkipReason::TooLarge);
            } else {
                pipeline.process_item(line, out);
            }
            flush(out)?;
        }
        return Ok(());
    };
    for value in values {
        let text = value.get();
        if text.starts_with('[') {
            match serde_json::from_str::<Vec<&RawValue>>(text) {
                Ok(items) => {
                    let mut decoded: Vec<Decoded> = Vec::with_capacity(items.len());
                    for item in items {
                        pipeline.decode(item.get().as_bytes(), &mut decoded);
                    }
                    // Time order; skipped items first, where they are only counted. Stable, so
                    // entries with equal timestamps keep the file's order.
                    decoded.sort_by_key(|d| d.as_ref().ok().map(|a| a.timestamp));
                    for d in decoded {
                        pipeline.process(d, out);
                        flush(out)?;
                    }
                }
                Err(_) => pipeline.skip(SkipReason::InvalidJson),
            }
        } else {
            pipeline.process_item(text.as_bytes(), out);
            flush(out)?;
        }
    }
    Ok(())
}

/// What [`Lines::next`] found.
enum Next<'a> {
    /// A line, without its newline (a final line may lack one).
    Line(&'a [u8]),
    /// A line longer than [`MAX_ENTRY_BYTES`], dropped as it streamed past.
    TooLong,
    /// The end of the input.
    Eof,
}

/// Streams lines out of a reader through one fixed buffer, handing out slices of it: a line is
/// never copied unless it straddles two reads, and never held when it is too long.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    discarding: bool,
}

impl<R: Read> Lines<R> {
    fn new(reader: R) -> Self {
        // Room for the longest accepted line plus one read.
        Lines {
            reader,
            buf: vec![0; MAX_ENTRY_BYTES + READ_BUFFER],
            start: 0,
            end: 0,
            eof: false,
            discarding: false,
        }
    }

    /// Skips a UTF-8 byte-order mark at the start (some Windows editors write one).
    fn skip_bom(&mut self) -> io::Result<()> {
        while self.end - self.start < 3 && self.fill()? {}
        if self.buf[self.start..self.end].starts_with(b"\xEF\xBB\xBF") {
            self.start += 3;
        }
        Ok(())
    }

    /// Reads more, after moving the unread tail to the front. False at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.discarding {
            self.start = self.end;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A line fills the whole buffer: it is too long; drop it as it streams past.
            self.discarding = true;
            self.end = 0;
        }
        loop {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn next(&mut self) -> io::Result<Next<'_>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.start..self.start + i;
                self.start += i + 1;
                if std::mem::take(&mut self.discarding) || line.len() > MAX_ENTRY_BYTES {
                    return Ok(Next::TooLong);
                }
                let line = &self.buf[line];
                return Ok(Next::Line(line.strip_suffix(b"\r").unwrap_or(line)));
            }
            if !self.fill()? {
                if std::mem::take(&mut self.discarding) {
                    self.start = self.end;
                    return Ok(Next::TooLong);
                }
                if self.start == self.end {
                    return Ok(Next::Eof);
                }
                let line = self.start..self.end;
                self.start = self.end;
                if line.len() > MAX_ENTRY_BYTES {
                    return Ok(Next::TooLong);
                }
                return Ok(Next::Line(&self.buf[line]));
            }
        }
    }

    /// The first byte that is not white space, without consuming anything else.
    fn first_byte(&mut self) -> io::Result<Option<u8>> {
        loop {
            if let Some(b) = self.buf[self.start..self.end]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
            {
                return Ok(Some(*b));
            }
            self.start = self.end;
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// `head`, a newline, then everything not yet read: a whole document.
    fn rest(mut self, head: &[u8]) -> io::Result<Vec<u8>> {
        let mut whole = Vec::with_capacity(head.len() + 1 + self.end - self.start);
        if !head.is_empty() {
            whole.extend_from_slice(head);
            whole.push(b'\n');
        }
        whole.extend_from_slice(&self.buf[self.start..self.end]);
        self.reader.read_to_end(&mut whole)?;
        Ok(whole)
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

/// A byte progress bar on stderr when it is a terminal; hidden otherwise (logs, CI, pipes).
fn progress_bar(size: Option<u64>, name: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match size {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(name.to_owned());
    bar
}
