//! The console port's sink: bytes from the guest become lines prefixed with the VM's name.

use std::sync::{Arc, Mutex};

/// A line longer than this is cut and continued on the next line.
const MAX_LINE: usize = 1024;
/// Lines kept; later lines are counted as dropped (a guest must not exhaust host memory).
const MAX_LINES: usize = 10_000;

#[derive(Debug, Default)]
struct Inner {
    lines: Vec<String>,
    partial: Vec<u8>,
    dropped: u64,
}

/// A VM's console log: complete lines, each `"<vm name>: <text>"`. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Console {
    name: Arc<str>,
    echo: bool,
    inner: Arc<Mutex<Inner>>,
}

impl Console {
    pub(crate) fn new(name: &str, echo: bool) -> Self {
        Self {
            name: name.into(),
            echo,
            inner: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned console only means a reader panicked; the data is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_line(&self, inner: &mut Inner) {
        let text = String::from_utf8_lossy(&inner.partial);
        let line = format!("{}: {}", self.name, text.trim_end_matches('\r'));
        inner.partial.clear();
        if self.echo {
            log::info!("{line}");
        }
        if inner.lines.len() < MAX_LINES {
            inner.lines.push(line);
        } else {
            inner.dropped += 1;
        }
    }

    /// Appends bytes written by the guest.
    pub(crate) fn write(&self, bytes: &[u8]) {
        let mut inner = self.lock();
        for &b in bytes {
            if b == b'\n' {
                self.push_line(&mut inner);
            } else {
                inner.partial.push(b);
                if inner.partial.len() >= MAX_LINE {
                    self.push_line(&mut inner);
                }
            }
        }
    }

    /// Ends a pending partial line (called when the vCPU stops).
    pub(crate) fn flush(&self) {
        let mut inner = self.lock();
        if !inner.partial.is_empty() {
            self.push_line(&mut inner);
        }
    }

    /// A copy of the complete lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Removes and returns the complete lines so far.
    pub fn take_lines(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().lines)
    }

    /// Lines dropped because the log was full.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_split() {
        let c = Console::new("vm0", false);
        c.write(b"hello\r\nwor");
        c.write(b"ld\npartial");
        assert_eq!(c.lines(), vec!["vm0: hello", "vm0: world"]);
        c.flush();
        assert_eq!(c.take_lines().len(), 3);
        assert!(c.lines().is_empty());
        c.write(&[b'x'; MAX_LINE + 1]);
        assert_eq!(c.lines().len(), 1);
    }
}
