//! The byte streams of a restore: the packs as they arrive, one frame of
//! them, a frame's decompressed (and checked) contents, and the in-memory
//! pipe from the tar writer to the unpacker.

use std::io::{self, Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// Bytes sent through the pipe at a time.
const PIPE_CHUNK: usize = 256 * 1024;
/// Chunks the pipe holds (with [`PIPE_CHUNK`], at most 2 MiB).
const PIPE_DEPTH: usize = 8;

/// The packs' bytes as they arrive: pack 0 whole, then pack 1, …
pub(super) struct Packs<F> {
    next: F,
    /// The pack being read (`None` before the first chunk).
    pack: Option<u32>,
    /// Offset in that pack of `data[at]`.
    pos: u64,
    data: Vec<u8>,
    at: usize,
    /// Bytes received.
    pub received: u64,
}

impl<F: FnMut() -> Result<Option<(u32, Vec<u8>)>, String>> Packs<F> {
    /// The packs `next` yields.
    pub fn new(next: F) -> Self {
        Self { next, pack: None, pos: 0, data: Vec::new(), at: 0, received: 0 }
    }

    /// The next chunk; `false` at the end.
    fn fetch(&mut self) -> Result<bool, String> {
        let Some((pack, data)) = (self.next)()? else { return Ok(false) };
        match self.pack {
            Some(current) if pack < current => {
                return Err(format!("the snapshot's packs arrive out of order ({pack} after {current})"));
            }
            Some(current) if pack == current => {}
            _ => {
                self.pack = Some(pack);
                self.pos = 0;
            }
        }
        self.received += data.len() as u64;
        self.data = data;
        self.at = 0;
        Ok(true)
    }

    /// Skips to `offset` in `pack`, where the frame of `path` starts.
    pub fn seek(&mut self, pack: u32, offset: u64, path: &str) -> Result<(), String> {
        loop {
            let left = (self.data.len() - self.at) as u64;
            match self.pack {
                Some(p) if p == pack && offset < self.pos => {
                    return Err(format!("the frame of {path} overlaps the one before it"));
                }
                Some(p) if p == pack && offset - self.pos < left => {
                    self.at += usize::try_from(offset - self.pos).unwrap_or(usize::MAX);
                    self.pos = offset;
                    return Ok(());
                }
                Some(p) if p > pack => return Err(short(pack, path)),
                _ => {}
            }
            self.pos += left;
            self.at = self.data.len();
            if !self.fetch()? {
                return Err(short(pack, path));
            }
        }
    }

    /// Up to `out.len()` bytes of `pack` (where [`Packs::seek`] left off).
    fn read_in(&mut self, pack: u32, out: &mut [u8]) -> Result<usize, String> {
        while self.at == self.data.len() {
            if !self.fetch()? || self.pack != Some(pack) {
                return Ok(0);
            }
        }
        let n = out.len().min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.pos += n as u64;
        Ok(n)
    }
}

fn short(pack: u32, path: &str) -> String {
    format!("the snapshot's pack {pack} ends before the frame of {path}")
}

/// One frame of a pack, as it arrives.
pub(super) struct Frame<'a, F> {
    pub packs: &'a mut Packs<F>,
    pub pack: u32,
    /// Bytes of the frame not yet read.
    pub left: u64,
    pub path: &'a str,
}

impl<F: FnMut() -> Result<Option<(u32, Vec<u8>)>, String>> Read for Frame<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = self.packs.read_in(self.pack, &mut buf[..want]).map_err(io::Error::other)?;
        if n == 0 {
            return Err(io::Error::other(format!("the frame of {} is cut short", self.path)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A file's decompressed contents, checked: exactly `left` bytes, whose
/// blake3 is `expect` (a mismatch is an error instead of the end).
pub(super) struct Checked<'a, R> {
    pub inner: R,
    pub left: u64,
    pub hasher: blake3::Hasher,
    pub expect: [u8; 32],
    pub path: &'a str,
}

impl<R: Read> Checked<'_, R> {
    fn end(&mut self) -> io::Result<usize> {
        let mut more = [0u8; 1];
        if read_retrying(&mut self.inner, &mut more)? > 0 {
            return Err(io::Error::other(format!("{} decompresses to more bytes than its size", self.path)));
        }
        if *self.hasher.finalize().as_bytes() != self.expect {
            return Err(io::Error::other(format!("{} does not have the blake3 its entry gives", self.path)));
        }
        Ok(0)
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return self.end();
        }
        let want = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        let n = read_retrying(&mut self.inner, &mut buf[..want])?;
        if n == 0 && want > 0 {
            return Err(io::Error::other(format!("{} decompresses to fewer bytes than its size", self.path)));
        }
        self.hasher.update(&buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A bounded in-memory pipe: what the writer writes, the reader reads (on
/// another thread). The reader sees the end only when the writer ended it
/// ([`PipeWriter::end`]); a writer dropped before that is an error to it.
pub(super) fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(PIPE_DEPTH);
    let writer = PipeWriter { tx, buf: Vec::with_capacity(PIPE_CHUNK), broken: false, aborted: false };
    (writer, PipeReader { rx, data: Vec::new(), at: 0, ended: false })
}

/// The writing end of [`pipe`].
pub(super) struct PipeWriter {
    tx: SyncSender<Option<Vec<u8>>>,
    buf: Vec<u8>,
    /// The reader went away.
    pub broken: bool,
    /// Writes fail from now on ([`PipeWriter::abort`]).
    aborted: bool,
}

impl PipeWriter {
    /// Makes every further write fail, so that nothing more reaches the reader.
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// Sends what is buffered and the end.
    pub fn end(mut self) -> io::Result<()> {
        self.send()?;
        // The reader may already have stopped at the end of the archive in
        // what it was sent: it no longer needs to be told.
        self.tx.send(None).ok();
        Ok(())
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_CHUNK));
        self.tx.send(Some(data)).map_err(|_| self.gone())
    }

    fn gone(&mut self) -> io::Error {
        self.broken = true;
        io::Error::new(io::ErrorKind::BrokenPipe, "the unpacking stopped")
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.aborted {
            return Err(io::Error::other("the restore was abandoned"));
        }
        let n = data.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end of [`pipe`].
pub(super) struct PipeReader {
    rx: Receiver<Option<Vec<u8>>>,
    data: Vec<u8>,
    at: usize,
    ended: bool,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.data.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Some(data)) => {
                    self.data = data;
                    self.at = 0;
                }
                Ok(None) => self.ended = true,
                Err(_) => return Err(io::Error::other("the snapshot stream stopped")),
            }
        }
        let n = out.len().min(self.data.len() - self.at);
        out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
