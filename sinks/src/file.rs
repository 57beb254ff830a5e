//! The file receiver: alerts appended to a file, one JSON line each (NDJSON) or the terminal
//! view, through the same [`WriterReceiver`] as stdout.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use crate::stdout::{Format, Printer, WriterReceiver};

/// A file receiver.
pub type FileReceiver = WriterReceiver<std::fs::File>;

impl WriterReceiver<std::fs::File> {
    /// Opens `path` for appending (creating it and its folder). A write error (a full disk)
    /// may get better: it is retried.
    pub fn file(name: &str, path: &Path, format: Format) -> io::Result<FileReceiver> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(WriterReceiver {
            name: name.to_owned(),
            label: path.display().to_string(),
            retry_errors: true,
            out: Mutex::new(Printer::new(file, vec![format])),
        })
    }
}
