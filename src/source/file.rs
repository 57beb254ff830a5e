//! Files: NDJSON (one entry a line), a JSON array (`gcloud logging read --format=json`), one
//! pretty-printed document, or Pub/Sub message dumps — read from a path or stdin.
//!
//! NDJSON streams line by line with one reused buffer, so memory stays bounded whatever the
//! file's size; a line longer than [`MAX_ENTRY_BYTES`] is skipped without being held. A JSON
//! array is one document, read whole and processed in timestamp order (gcloud prints newest
//! first), as CONTRACT section 1 says.

use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
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
pub fn replay(path: &Path, pipeline: &mut Pipeline, emit: &mut dyn FnMut(&[Alert]) -> io::Result<()>) -> Result<(), FileError> {
    let name = path.display().to_string();
    let io_err = |source| FileError::Io { path: name.clone(), source };
    let (reader, size): (Box<dyn Read>, Option<u64>) = if name == "-" {
        (Box::new(io::stdin().lock()), None)
    } else {
        let f = File::open(path).map_err(io_err)?;
        let size = f.metadata().ok().map(|m| m.len());
        (Box::new(f), size)
    };
    let progress = progress_bar(size, &name);
    let mut reader = BufReader::with_capacity(READ_BUFFER, progress.wrap_read(reader));
    let mut out = Vec::new();
    let mut flush = |pipeline: &mut Pipeline, out: &mut Vec<Alert>| -> Result<(), FileError> {
        if !out.is_empty() {
            emit(out).map_err(FileError::Output)?;
            out.clear();
        }
        let _ = pipeline;
        Ok(())
    };

    let first = first_byte(&mut reader).map_err(io_err)?;
    let result = match first {
        None => Ok(()),
        Some(b'[') => {
            let mut whole = Vec::new();
            reader.read_to_end(&mut whole).map_err(io_err)?;
            document(&whole, pipeline, &mut out, &mut flush)
        }
        Some(_) => {
            let mut line = Vec::with_capacity(4096);
            let mut first_line = true;
            loop {
                match read_line(&mut reader, &mut line).map_err(io_err)? {
                    Line::Eof => break,
                    Line::TooLong => pipeline.skip(SkipReason::TooLarge),
                    Line::Ok if is_blank(&line) => {}
                    Line::Ok => {
                        // A first line that is not a whole JSON value starts a pretty-printed
                        // document: read it whole.
                        if first_line && serde_json::from_slice::<serde::de::IgnoredAny>(&line).is_err() {
                            let mut whole = std::mem::take(&mut line);
                            whole.push(b'\n');
                            reader.read_to_end(&mut whole).map_err(io_err)?;
                            document(&whole, pipeline, &mut out, &mut flush)?;
                            break;
                        }
                        pipeline.process_item(&line, &mut out);
                        flush(pipeline, &mut out)?;
                    }
                }
                first_line = false;
            }
            Ok(())
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
    flush: &mut dyn FnMut(&mut Pipeline, &mut Vec<Alert>) -> Result<(), FileError>,
) -> Result<(), FileError> {
    let values: Result<Vec<&RawValue>, _> = serde_json::Deserializer::from_slice(whole).into_iter::<&RawValue>().collect();
    let Ok(values) = values else {
        for line in whole.split(|&b| b == b'\n').filter(|l| !is_blank(l)) {
            if line.len() > MAX_ENTRY_BYTES {
                pipeline.skip(SkipReason::TooLarge);
            } else {
                pipeline.process_item(line, out);
            }
            flush(pipeline, out)?;
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
                        flush(pipeline, out)?;
                    }
                }
                Err(_) => pipeline.skip(SkipReason::InvalidJson),
            }
        } else {
            pipeline.process_item(text.as_bytes(), out);
            flush(pipeline, out)?;
        }
    }
    Ok(())
}

enum Line {
    Ok,
    TooLong,
    Eof,
}

/// Reads up to the next newline into `line` (without it). A line over [`MAX_ENTRY_BYTES`] is
/// consumed and dropped as it streams past, never held.
fn read_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Line> {
    line.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::Eof,
                (true, true) => Line::TooLong,
                (true, false) => Line::Ok,
            });
        }
        any = true;
        let (chunk, done) = match memchr(b'\n', buf) {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_ENTRY_BYTES {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        if done.is_some() {
            return Ok(if too_long { Line::TooLong } else { Line::Ok });
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

fn first_byte(reader: &mut impl BufRead) -> io::Result<Option<u8>> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => return Ok(Some(buf[i])),
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
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
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(name.to_owned());
    bar
}
