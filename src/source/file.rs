//! Files: NDJSON (one entry a line), a JSON array (`gcloud logging read --format=json`), one
//! or several pretty-printed documents, or Pub/Sub message dumps — read from a path or stdin.
//!
//! Everything streams through one fixed buffer ([`MAX_ENTRY_BYTES`] plus one read), so memory
//! stays bounded whatever the input, hostile or not:
//!
//! - NDJSON goes line by line. A line that is not JSON is one counted skip, and reading goes on
//!   at the next newline; a line longer than [`MAX_ENTRY_BYTES`] is dropped as it streams past.
//! - A JSON array goes element by element. Each element's end is found by counting brackets
//!   outside strings, so a `too_large` element is dropped as it streams past, never held.
//!   The elements are decoded as they come and only the [`Attempt`]s are kept, to be
//!   processed in timestamp order once the array closes (gcloud prints newest first; CONTRACT
//!   section 1). An array that breaks (an interrupted export) keeps what it has: the entries
//!   before the break are processed, and the rest is one counted skip with a warning that says
//!   where it broke.
//! - Pretty-printed documents go value by value, the same way.
//!
//! Which of these a file is, is decided from its start: `[` opens an array; a first line that
//! is a whole JSON value starts NDJSON; a first line that is not, but opens an object that
//! closes at the end of a line within [`MAX_ENTRY_BYTES`] as valid JSON, starts documents.
//! Anything else is NDJSON whose first line is broken (a file with its head cut off), so
//! reading recovers at the next newline instead of holding the rest.

use std::fs::File;
use std::io::{self, IsTerminal, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use schedwatch_sinks::Alert;

use crate::decode::{Attempt, Decoded, SkipReason, MAX_ENTRY_BYTES};
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
    let (reader, size): (Box<dyn Read>, Option<u64>) = if name == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path).map_err(|source| FileError::Io {
            path: name.clone(),
            source,
        })?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let progress = progress_bar(size, &name);
    let mut input = Input::new(progress.wrap_read(reader));
    let mut feed = Feed {
        name: &name,
        pipeline,
        out: Vec::new(),
        emit,
    };
    input.skip_bom().map_err(|e| feed.io(e))?;
    let result = match input.layout().map_err(|e| feed.io(e))? {
        Layout::Empty => Ok(()),
        Layout::Lines => lines(&mut input, &mut feed),
        Layout::Documents => documents(&mut input, &mut feed),
    };
    progress.finish_and_clear();
    result
}

/// Where items go: the pipeline, then the alerts they make to `emit`, at once.
struct Feed<'a> {
    /// The path (`-` for stdin), for errors.
    name: &'a str,
    pipeline: &'a mut Pipeline,
    out: Vec<Alert>,
    emit: &'a mut dyn FnMut(&[Alert]) -> io::Result<()>,
}

impl Feed<'_> {
    /// Decodes and processes one item.
    fn item(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.pipeline.process_item(bytes, &mut self.out);
        self.flush()
    }

    /// Processes one decoded entry.
    fn attempt(&mut self, attempt: Attempt) -> Result<(), FileError> {
        self.pipeline.process(Ok(attempt), &mut self.out);
        self.flush()
    }

    fn skip(&mut self, reason: SkipReason) {
        self.pipeline.skip(reason);
    }

    fn flush(&mut self) -> Result<(), FileError> {
        if !self.out.is_empty() {
            (self.emit)(&self.out).map_err(FileError::Output)?;
            self.out.clear();
        }
        Ok(())
    }

    fn io(&self, source: io::Error) -> FileError {
        FileError::Io {
            path: self.name.to_owned(),
            source,
        }
    }
}

/// NDJSON: each line an item; blank lines are not entries.
fn lines<R: Read>(input: &mut Input<R>, feed: &mut Feed<'_>) -> Result<(), FileError> {
    loop {
        match input.line().map_err(|e| feed.io(e))? {
            Line::Eof => return Ok(()),
            Line::TooLong => feed.skip(SkipReason::TooLarge),
            Line::Whole(line) if is_blank(line) => {}
            Line::Whole(line) => feed.item(line)?,
        }
    }
}

/// JSON values one after another (pretty-printed entries, Pub/Sub dumps, arrays), each an
/// item; an array's elements are items, in timestamp order.
fn documents<R: Read>(input: &mut Input<R>, feed: &mut Feed<'_>) -> Result<(), FileError> {
    loop {
        match input.peek().map_err(|e| feed.io(e))? {
            None => return Ok(()),
            Some(b'[') => {
                if !array(input, feed)? {
                    return Ok(());
                }
            }
            Some(_) => match input.value(Within::Documents).map_err(|e| feed.io(e))? {
                Value::Whole(bytes) => feed.item(bytes)?,
                Value::TooLong => feed.skip(SkipReason::TooLarge),
                Value::Open => {
                    // The input ended inside a value: there is nothing after it to recover.
                    feed.skip(SkipReason::InvalidJson);
                    return Ok(());
                }
            },
        }
    }
}

/// One JSON array, from its `[`: the elements are decoded as they stream past, and the entries
/// processed in timestamp order once it closes or breaks. False when it broke: what follows the
/// break is one counted skip, and is not read.
fn array<R: Read>(input: &mut Input<R>, feed: &mut Feed<'_>) -> Result<bool, FileError> {
    let opened_at = input.offset();
    input.consume(1);
    // What the sort holds: decoded attempts, a few hundred bytes each (the details are kept
    // for failures only), never the array's text.
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut decoded: Vec<Decoded> = Vec::new();
    let mut elements: u64 = 0;
    // The byte offset where the array stops being JSON, if it does.
    let broke_at = loop {
        // An element, or the end of the array (also after a trailing comma: harmless).
        let next = input.peek().map_err(|e| feed.io(e))?;
        let at = input.offset();
        match next {
            None | Some(b',' | b':' | b'}') => break Some(at),
            Some(b']') => {
                input.consume(1);
                break None;
            }
            Some(_) => {}
        }
        match input.value(Within::Array).map_err(|e| feed.io(e))? {
            Value::Whole(bytes) => {
                feed.pipeline.decode(bytes, &mut decoded);
                // Skipped items are only counted: no need to keep them for the sort.
                for d in decoded.drain(..) {
                    match d {
                        Ok(attempt) => attempts.push(attempt),
                        Err(reason) => feed.skip(reason),
                    }
                }
            }
            Value::TooLong => feed.skip(SkipReason::TooLarge),
            Value::Open => break Some(at),
        }
        elements += 1;
        let next = input.peek().map_err(|e| feed.io(e))?;
        let at = input.offset();
        match next {
            Some(b',') => input.consume(1),
            Some(b']') => {
                input.consume(1);
                break None;
            }
            _ => break Some(at),
        }
    };
    // Stable, so entries with equal timestamps keep the file's order.
    attempts.sort_by_key(|a| a.timestamp);
    for attempt in attempts {
        feed.attempt(attempt)?;
    }
    if let Some(at) = broke_at {
        tracing::warn!(
            path = feed.name,
            byte = at,
            elements,
            "the JSON array that opens at byte {opened_at} breaks at byte {at}, after {elements} elements \
             (an interrupted export?): those are processed; the rest is skipped as one invalid_json item"
        );
        feed.skip(SkipReason::InvalidJson);
    }
    Ok(broke_at.is_none())
}

/// How a file is laid out, judged from its start.
#[derive(Debug, PartialEq)]
enum Layout {
    /// Nothing but white space.
    Empty,
    /// NDJSON: one item a line.
    Lines,
    /// JSON values one after another: an array, pretty-printed objects.
    Documents,
}

/// What [`Input::line`] found.
enum Line<'a> {
    /// A line, without its newline (a final line may lack one).
    Whole(&'a [u8]),
    /// A line longer than [`MAX_ENTRY_BYTES`], dropped as it streamed past.
    TooLong,
    /// The end of the input.
    Eof,
}

/// What [`Input::value`] found.
enum Value<'a> {
    /// A value's bytes (whether they are valid JSON is the decoder's to say).
    Whole(&'a [u8]),
    /// A value longer than [`MAX_ENTRY_BYTES`], dropped as it streamed past.
    TooLong,
    /// The input ended inside the value.
    Open,
}

/// Where a value is read: inside an array, a value must be followed by `,` or `]`, so the end
/// of the input never ends one.
#[derive(Clone, Copy, PartialEq)]
enum Within {
    Array,
    Documents,
}

/// Streams items out of a reader through one fixed buffer, handing out slices of it: an item is
/// never copied unless it straddles two reads, and never held when it is too long.
struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    /// The first byte not consumed.
    start: usize,
    /// The end of the bytes read.
    end: usize,
    /// The offset in the input of `buf[0]`.
    base: u64,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn new(reader: R) -> Self {
        Input {
            reader,
            // Room for the longest accepted item plus one read.
            buf: vec![0; MAX_ENTRY_BYTES + READ_BUFFER],
            start: 0,
            end: 0,
            base: 0,
            eof: false,
        }
    }

    /// The offset in the input of the first byte not consumed.
    fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Consumes `n` bytes the caller has seen (by [`Input::peek`]).
    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
    }

    /// Reads more, after moving the bytes not consumed to the front. False at the end of the
    /// input. Callers keep at most [`MAX_ENTRY_BYTES`] unconsumed, so there is always room.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        debug_assert!(self.end < self.buf.len(), "an item outgrew the buffer");
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

    /// Up to `n` bytes from the first one not consumed, without consuming them; fewer only at
    /// the end of the input. `n` is at most [`MAX_ENTRY_BYTES`] + 1.
    fn ahead(&mut self, n: usize) -> io::Result<&[u8]> {
        while self.end - self.start < n && self.fill()? {}
        let end = self.end.min(self.start + n);
        Ok(&self.buf[self.start..end])
    }

    /// Skips a UTF-8 byte-order mark at the start (some Windows editors write one).
    fn skip_bom(&mut self) -> io::Result<()> {
        if self.ahead(3)?.starts_with(b"\xEF\xBB\xBF") {
            self.consume(3);
        }
        Ok(())
    }

    /// Consumes white space; the next byte, not consumed. None at the end of the input.
    fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            let unread = &self.buf[self.start..self.end];
            if let Some(i) = unread.iter().position(|b| !b.is_ascii_whitespace()) {
                self.start += i;
                return Ok(Some(self.buf[self.start]));
            }
            self.start = self.end;
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Judges the layout from the first [`MAX_ENTRY_BYTES`] after leading white space, which
    /// stay unconsumed.
    fn layout(&mut self) -> io::Result<Layout> {
        let Some(first) = self.peek()? else {
            return Ok(Layout::Empty);
        };
        if first == b'[' {
            return Ok(Layout::Documents);
        }
        let head = self.ahead(MAX_ENTRY_BYTES + 1)?;
        let line = match memchr::memchr(b'\n', head) {
            Some(i) => &head[..i],
            // A first line too long to be an entry: NDJSON, whose first line is skipped.
            None if head.len() > MAX_ENTRY_BYTES => return Ok(Layout::Lines),
            None => head,
        };
        if first != b'{' || is_json(line) {
            return Ok(Layout::Lines);
        }
        // A first line that is not JSON: a pretty-printed document if its first object closes
        // at the end of a line and is valid JSON; else a broken first line.
        let mut scan = Scan::after(first);
        let Some(n) = scan.feed(&head[1..]).map(|i| i + 1) else {
            return Ok(Layout::Lines);
        };
        let tail = &head[n..];
        let rest_of_line = &tail[..memchr::memchr(b'\n', tail).unwrap_or(tail.len())];
        if is_blank(rest_of_line) && is_json(&head[..n]) {
            Ok(Layout::Documents)
        } else {
            Ok(Layout::Lines)
        }
    }

    /// The next line. A line longer than [`MAX_ENTRY_BYTES`] is dropped as it streams past.
    fn line(&mut self) -> io::Result<Line<'_>> {
        let mut scanned = 0;
        let mut dropped = false;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start + scanned..self.end]) {
                let line = self.start..self.start + scanned + i;
                self.start = line.end + 1;
                if dropped || line.len() > MAX_ENTRY_BYTES {
                    return Ok(Line::TooLong);
                }
                let line = &self.buf[line];
                return Ok(Line::Whole(line.strip_suffix(b"\r").unwrap_or(line)));
            }
            scanned = self.end - self.start;
            if scanned > MAX_ENTRY_BYTES {
                self.start = self.end;
                scanned = 0;
                dropped = true;
            }
            if !self.fill()? {
                if dropped {
                    self.start = self.end;
                    return Ok(Line::TooLong);
                }
                if self.start == self.end {
                    return Ok(Line::Eof);
                }
                let line = self.start..self.end;
                self.start = self.end;
                return Ok(Line::Whole(&self.buf[line]));
            }
        }
    }

    /// The value that starts at the next byte (after [`Input::peek`]), found by [`Scan`]. A
    /// value longer than [`MAX_ENTRY_BYTES`] is dropped as it streams past.
    fn value(&mut self, within: Within) -> io::Result<Value<'_>> {
        let mut scan = Scan::after(self.buf[self.start]);
        let mut scanned = 1;
        let mut dropped = false;
        loop {
            let found = scan.feed(&self.buf[self.start + scanned..self.end]);
            if let Some(i) = found {
                let value = self.start..self.start + scanned + i;
                self.start = value.end;
                if dropped || value.len() > MAX_ENTRY_BYTES {
                    return Ok(Value::TooLong);
                }
                return Ok(Value::Whole(&self.buf[value]));
            }
            scanned = self.end - self.start;
            if scanned > MAX_ENTRY_BYTES {
                self.start = self.end;
                if scan.is_bare() {
                    // No number or literal is this long: the input stops being JSON here
                    // (`[` then zeros), and nothing after it can be found.
                    return Ok(Value::Open);
                }
                scanned = 0;
                dropped = true;
            }
            if !self.fill()? {
                let value = self.start..self.end;
                self.start = self.end;
                // A bare word (a number, `null`) at the very end of a document is whole.
                if scan.is_bare() && within == Within::Documents {
                    if dropped {
                        return Ok(Value::TooLong);
                    }
                    return Ok(Value::Whole(&self.buf[value]));
                }
                return Ok(Value::Open);
            }
        }
    }
}

/// Finds where a JSON value ends without parsing it: brackets are counted outside strings, and
/// a string ends at a quote no backslash escapes; a bare word (number, `true`, junk) ends before
/// white space, `,`, `]` or `}`. Mismatched brackets go unnoticed here: the decoder rejects
/// them when it parses the value. The state carries over from one piece of input to the next.
struct Scan {
    /// A bare word, not a string or a bracketed value.
    bare: bool,
    /// Brackets open.
    depth: u64,
    in_string: bool,
    /// The previous byte was a backslash inside a string.
    escaped: bool,
}

impl Scan {
    /// The state after a value's first byte.
    fn after(first: u8) -> Scan {
        Scan {
            bare: !matches!(first, b'{' | b'[' | b'"'),
            depth: u64::from(matches!(first, b'{' | b'[')),
            in_string: first == b'"',
            escaped: false,
        }
    }

    fn is_bare(&self) -> bool {
        self.bare
    }

    /// Reads the next piece of the value: the length of the value's part in `bytes` when the
    /// value ends there.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        if self.bare {
            return bytes
                .iter()
                .position(|b| b.is_ascii_whitespace() || matches!(b, b',' | b']' | b'}'));
        }
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Strings are most of an entry's bytes: jump to the next quote or backslash.
                match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                    None => return None,
                    Some(j) => {
                        i += j;
                        if bytes[i] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                            if self.depth == 0 {
                                return Some(i + 1);
                            }
                        }
                    }
                }
            } else {
                match bytes[i] {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth = self.depth.saturating_sub(1);
                        if self.depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        None
    }
}

/// Whether `bytes` are one whole JSON value (white space around it allowed).
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
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

#[cfg(test)]
mod tests;
