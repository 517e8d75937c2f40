//! Reading the files the configuration names (the config file, the web config, its
//! certificates and keys) with bounds: only regular files, and only up to a size no
//! sane file of that kind reaches. `/dev/zero` would otherwise be read until memory runs
//! out, and a FIFO would block the reader (at start, or a SIGHUP reload) forever.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest configuration, web configuration, certificate or key file read. The
/// shipped example is 6 KiB; a CA bundle of every public root is about 200 KiB.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The whole of a regular file of at most `MAX_FILE_BYTES`. Anything else (a device, a
/// FIFO, a socket, a directory, a larger file) is an error saying what it is.
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It does
    // nothing to reads of a regular file, the only kind read below.
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ));
    }
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file at the limit from a larger one (a file
    // that grows while read is cut here too).
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("larger than the {} KiB limit", MAX_FILE_BYTES / 1024),
        ));
    }
    Ok(bytes)
}

/// As [`read_bounded`], as UTF-8 text.
pub fn read_bounded_text(path: &Path) -> io::Result<String> {
    String::from_utf8(read_bounded(path)?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_devices_fifos_directories_and_large_files() {
        let error = read_bounded(Path::new("/dev/zero")).unwrap_err();
        assert!(error.to_string().contains("a device"), "{error}");
        assert!(read_bounded(Path::new("/")).is_err());

        let dir = std::env::temp_dir().join(format!("tcpstate-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        // Returns at once (no writer needed), with an error naming the kind.
        let error = read_bounded(&fifo).unwrap_err();
        assert!(error.to_string().contains("a FIFO"), "{error}");

        let big = dir.join("big");
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert!(
            read_bounded(&big)
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
        std::fs::write(&big, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read_bounded(&big).unwrap().len() as u64, MAX_FILE_BYTES);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
