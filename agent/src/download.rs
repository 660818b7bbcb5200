//! Downloading a package for the update machine (shell side): HTTP(S)
//! with `Range` resume, the signed length as a hard cap, fsync before any
//! progress is reported (the core persists progress and resumes from it
//! after a crash, so reported bytes must be on disk).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Why a download stopped short. `bytes_written` (fsynced) is where a
/// retry resumes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The server answered with an error status; retrying may help (5xx)
    /// or not (4xx).
    #[error("{url}: HTTP {status}")]
    Status {
        url: String,
        status: u16,
        bytes_written: u64,
    },
    /// The connection failed or broke off.
    #[error("{url}: {reason} after {bytes_written} bytes")]
    Interrupted {
        url: String,
        reason: String,
        bytes_written: u64,
    },
    /// More bytes than the signed length (endless data); the file is cut at
    /// the signed length.
    #[error("{url}: more than the signed {length} bytes")]
    TooLong { url: String, length: u64 },
    /// The caller asked it to stop (a command is waiting); the bytes
    /// written are fsynced and the download can resume from them.
    #[error("{url}: stopped after {bytes_written} bytes")]
    Stopped { url: String, bytes_written: u64 },
    /// Writing the file failed (a full disk, say).
    #[error("{path}: {source}")]
    Disk {
        path: String,
        source: std::io::Error,
        bytes_written: u64,
    },
}

impl DownloadError {
    /// Bytes safely on disk when it stopped.
    pub fn bytes_written(&self) -> u64 {
        match self {
            DownloadError::Status { bytes_written, .. }
            | DownloadError::Interrupted { bytes_written, .. }
            | DownloadError::Stopped { bytes_written, .. }
            | DownloadError::Disk { bytes_written, .. } => *bytes_written,
            DownloadError::TooLong { length, .. } => *length,
        }
    }
}

/// The client downloads use: statuses are answers, not errors (so a 416 or
/// a 503 is reported as such), with timeouts so a dead link cannot hang
/// the update forever.
pub fn http_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(10)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// Reports fsynced progress at most every this many bytes.
pub const PROGRESS_EVERY: u64 = 1 << 20;

/// Downloads `url` into `dest`, resuming after `resume_from` bytes (the
/// file is first cut there: a crash may have left an unsynced tail), and
/// never writing more than `length` bytes. Calls `progress(bytes)` after
/// each fsync. Returns the final length (fsynced). Blocking: run it on a
/// blocking thread.
pub fn download(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    resume_from: u64,
    length: u64,
    progress: impl FnMut(u64),
) -> Result<u64, DownloadError> {
    download_until(agent, url, dest, resume_from, length, progress, || false)
}

/// [`download`], asking `stop()` before the request and after every read:
/// when it says yes, the bytes written so far are fsynced and
/// [`DownloadError::Stopped`] says how many (a later call resumes there).
///
/// A link that delivers nothing is only noticed at the next read, that is
/// within the agent's receive timeout.
pub fn download_until(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    resume_from: u64,
    length: u64,
    mut progress: impl FnMut(u64),
    mut stop: impl FnMut() -> bool,
) -> Result<u64, DownloadError> {
    let path = dest.display().to_string();
    let disk = |source, bytes_written| DownloadError::Disk {
        path: path.clone(),
        source,
        bytes_written,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(dest)
        .map_err(|e| disk(e, 0))?;
    let on_disk = file.metadata().map_err(|e| disk(e, 0))?.len();
    let mut written = resume_from.min(on_disk).min(length);
    if written == length && length > 0 {
        file.set_len(length).map_err(|e| disk(e, 0))?;
        file.sync_all().map_err(|e| disk(e, 0))?;
        return Ok(length);
    }
    let stopped = |bytes_written| DownloadError::Stopped {
        url: url.to_owned(),
        bytes_written,
    };
    if stop() {
        file.set_len(written).map_err(|e| disk(e, written))?;
        sync(&file).map_err(|e| disk(e, written))?;
        return Err(stopped(written));
    }
    let mut req = agent.get(url);
    if written > 0 {
        req = req.header("Range", format!("bytes={written}-"));
    }
    let interrupted = |reason: String, bytes_written| DownloadError::Interrupted {
        url: url.to_owned(),
        reason,
        bytes_written,
    };
    let mut resp = req
        .call()
        .map_err(|e| interrupted(e.to_string(), written))?;
    let status = resp.status().as_u16();
    match status {
        206 => {}
        // The server ignored the range: start over.
        200 => written = 0,
        _ => {
            return Err(DownloadError::Status {
                url: url.to_owned(),
                status,
                bytes_written: written,
            });
        }
    }
    file.set_len(written).map_err(|e| disk(e, written))?;
    file.seek(SeekFrom::Start(written))
        .map_err(|e| disk(e, written))?;
    let mut body = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut synced = written;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                sync(&file).map_err(|e| disk(e, synced))?;
                return Err(interrupted(e.to_string(), written));
            }
        };
        let room = length - written;
        let take = (n as u64).min(room) as usize;
        file.write_all(&buf[..take]).map_err(|e| disk(e, synced))?;
        written += take as u64;
        if take < n {
            sync(&file).map_err(|e| disk(e, synced))?;
            return Err(DownloadError::TooLong {
                url: url.to_owned(),
                length,
            });
        }
        if written - synced >= PROGRESS_EVERY {
            sync(&file).map_err(|e| disk(e, synced))?;
            synced = written;
            progress(synced);
        }
        if written < length && stop() {
            sync(&file).map_err(|e| disk(e, synced))?;
            return Err(stopped(written));
        }
    }
    sync(&file).map_err(|e| disk(e, synced))?;
    if written > synced {
        progress(written);
    }
    Ok(written)
}

fn sync(file: &File) -> std::io::Result<()> {
    file.sync_data()
}
