//! A /proc file read every round in every namespace, opened once and re-read in place.
//! Opening is a path walk, and under /proc/sys one that compares the name with the entry
//! of every namespace that has one (`proc_sys_compare`): a cost that grows with the
//! namespaces, paid once per namespace, so with their square. A pread at offset 0 is
//! none of that, and gives the file as it is now (seq_file and the sysctl handlers make
//! the text afresh at offset 0). A file under /proc/sys/net or /proc/thread-self/net
//! stays bound to the namespace it was opened in, whichever thread reads it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::kernel::procfs;

/// Below this soft open-file limit kept files are opened anew for each read: held, a
/// sampler's take ten descriptors (1,000 pods: 10,000).
const HOLD_FROM_OPEN_FILE_LIMIT: u64 = 16_384;

/// Where a file's text starts growing from; netstat (4 KB) takes a few steps, once.
const FIRST_CAPACITY: usize = 256;

/// A file found missing is not looked for again before this: a missing /proc entry
/// (`tcp_ehash_entries` before Linux 6.1, `sockstat6` without IPv6) would otherwise cost
/// a full lookup each round in each namespace, the cost these files are kept to avoid.
const MISSING_RETRY: Duration = Duration::from_secs(60);

pub struct KeptFile {
    path: &'static str,
    file: Option<File>,
    /// Hold the file open or not; `None`: as this process decided (`may_hold`). Tests
    /// force it.
    hold: Option<bool>,
    /// The last read's text; its allocation is reused.
    text: Vec<u8>,
    /// When the file was last found missing (see `MISSING_RETRY`).
    missing_since: Option<Instant>,
    missing_retry: Duration,
}

impl KeptFile {
    pub fn new(path: &'static str) -> Self {
        KeptFile {
            path,
            file: None,
            hold: None,
            text: Vec::new(),
            missing_since: None,
            missing_retry: MISSING_RETRY,
        }
    }

    /// The whole file as it is now. Opens it when it is not held (the first read, a
    /// failed one, a low limit), so call it from a thread in the file's namespace.
    pub fn read(&mut self) -> io::Result<&str> {
        let held = self
            .file
            .as_ref()
            .map(|file| read_whole(file, &mut self.text));
        if !matches!(held, Some(Ok(()))) {
            self.file = None;
            let file = self.open()?;
            read_whole(&file, &mut self.text)?;
            if self.hold.unwrap_or_else(may_hold) {
                self.file = Some(file);
            }
        }
        std::str::from_utf8(&self.text).map_err(|_| {
            let what = format!("{}: not UTF-8", self.path);
            io::Error::new(io::ErrorKind::InvalidData, what)
        })
    }

    /// Opens the path, unless it was found missing less than `missing_retry` ago.
    fn open(&mut self) -> io::Result<File> {
        let missing = |path| {
            let what = format!("{path}: not found (looked for again after a minute)");
            io::Error::new(io::ErrorKind::NotFound, what)
        };
        if self
            .missing_since
            .is_some_and(|since| since.elapsed() < self.missing_retry)
        {
            return Err(missing(self.path));
        }
        match File::open(self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.missing_since = Some(Instant::now());
                Err(missing(self.path))
            }
            opened => {
                self.missing_since = None;
                opened
            }
        }
    }

    /// Holds the file from its first open whatever the limit (a test's limit may be low).
    #[cfg(test)]
    pub fn held(path: &'static str) -> Self {
        KeptFile {
            hold: Some(true),
            ..KeptFile::new(path)
        }
    }

    #[cfg(test)]
    pub fn is_held(&self) -> bool {
        self.file.is_some()
    }
}

/// This process's own limit, as procfs gives any process's (`None`: unlimited);
/// unreadable, files are not held. Read once per process (at the first open, after the
/// daemon raised its limit), not once per file: ten files per namespace.
fn may_hold() -> bool {
    static MAY_HOLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAY_HOLD.get_or_init(|| {
        let own = procfs::fd_soft_limit(Path::new("/proc"), std::process::id());
        own.is_ok_and(|soft| soft.is_none_or(|s| s >= HOLD_FROM_OPEN_FILE_LIMIT))
    })
}

/// Reads `file` from offset 0 until a read gives nothing, into `text`: a seq_file gives
/// at most a page of records per read, whatever room it is given.
fn read_whole(file: &File, text: &mut Vec<u8>) -> io::Result<()> {
    text.clear();
    loop {
        if text.len() == text.capacity() {
            text.reserve(text.capacity().max(FIRST_CAPACITY));
        }
        let start = text.len();
        text.resize(text.capacity(), 0);
        let read = file.read_at(&mut text[start..], start as u64);
        text.truncate(start + read.as_ref().map_or(0, |length| *length));
        match read {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> (std::path::PathBuf, &'static str) {
        let dir = std::env::temp_dir().join(format!("kept-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("file").to_string_lossy().into_owned();
        (dir, Box::leak(path.into_boxed_str()))
    }

    /// A held file gives its content as it is now, however long, and shorter again.
    #[test]
    fn a_held_file_reads_whole_and_follows_changes() {
        let (dir, path) = scratch("follows");
        let mut kept = KeptFile {
            missing_retry: Duration::ZERO,
            ..KeptFile::held(path)
        };
        assert_eq!(
            kept.read().map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::NotFound)
        );
        std::fs::write(path, "one\n").expect("write");
        assert_eq!(kept.read().expect("read"), "one\n");
        assert!(kept.is_held());
        let long = "x".repeat(10_000);
        std::fs::write(path, &long).expect("write");
        assert_eq!(
            kept.read().expect("read"),
            long,
            "past a page, several reads"
        );
        std::fs::write(path, "two").expect("write");
        assert_eq!(kept.read().expect("read"), "two");
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A missing file is not looked for again for a while; then it is found.
    #[test]
    fn a_missing_file_is_looked_for_again_only_later() {
        let (dir, path) = scratch("missing");
        let mut kept = KeptFile::held(path);
        let not_found = |kept: &mut KeptFile| {
            kept.read().map_err(|e| e.kind()).err() == Some(io::ErrorKind::NotFound)
        };
        assert!(not_found(&mut kept));
        std::fs::write(path, "late").expect("write");
        assert!(not_found(&mut kept), "within the retry delay: not opened");
        kept.missing_since = kept
            .missing_since
            .and_then(|since| since.checked_sub(MISSING_RETRY));
        assert!(kept.missing_since.is_some(), "a minute earlier");
        assert_eq!(kept.read().expect("looked for again"), "late");
        assert_eq!(kept.missing_since, None);
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    /// A held descriptor that fails to read is replaced by the path's file.
    #[test]
    fn a_failed_read_reopens() {
        let (dir, path) = scratch("reopens");
        std::fs::write(path, "fresh").expect("write");
        let mut kept = KeptFile::held(path);
        kept.file = Some(File::open(&dir).expect("a directory opens, but does not read"));
        assert_eq!(kept.read().expect("reopened"), "fresh");
        let mut unheld = KeptFile {
            hold: Some(false),
            ..KeptFile::new(path)
        };
        assert_eq!(unheld.read().expect("read"), "fresh");
        assert!(!unheld.is_held(), "below the limit, opened for each read");
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
