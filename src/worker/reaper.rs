//! The reaper: a small process forked by the worker at start-up that kills
//! every running task's process group when the worker dies, however it dies.
//!
//! The worker tells it each task's process group over a pipe (`+PGID` when a
//! task starts, `-PGID` when it ends). When the worker dies, even by
//! `kill -9`, the kernel closes the pipe's write end; the reaper reads
//! end-of-file, kills every group it still holds (grandchildren included),
//! and exits. Tasks then start through `posix_spawn` (no `pre_exec`), which
//! is much cheaper than the fork a `PR_SET_PDEATHSIG` hook forces.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::sync::{Mutex, OnceLock};

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The worker's end of the pipe to its reaper.
pub struct Reaper {
    pipe: Mutex<File>,
}

/// Forks the reaper and installs it for this process's `exec` tasks.
///
/// # Safety
/// The process must be single-threaded when this is called (before any
/// runtime or thread starts): the child runs Rust code after `fork`.
pub unsafe fn install() -> io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: a valid two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // The reaper. Without the write end, end-of-file means the worker
            // is gone. A Ctrl-C meant for the worker is not meant for it.
            // SAFETY: closing our copy of the write end; ignoring SIGINT.
            unsafe {
                libc::close(write_end);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
            }
            // SAFETY: read_end is an open descriptor owned by nothing else here.
            let pipe = unsafe { File::from_raw_fd(read_end) };
            watch(pipe);
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        _ => {
            // SAFETY: the read end belongs to the reaper now.
            unsafe {
                libc::close(read_end);
            }
            // SAFETY: write_end is an open descriptor owned by nothing else.
            let pipe = unsafe { File::from_raw_fd(write_end) };
            let _ = REAPER.set(Reaper {
                pipe: Mutex::new(pipe),
            });
            Ok(())
        }
    }
}

/// The reaper's loop: track groups, kill them all at end-of-file.
fn watch(pipe: File) {
    let mut groups = std::collections::HashSet::new();
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        let (op, pgid) = line.split_at(line.len().min(1));
        let Ok(pgid) = pgid.parse::<i32>() else {
            continue;
        };
        match op {
            "+" => {
                groups.insert(pgid);
            }
            "-" => {
                groups.remove(&pgid);
            }
            _ => {}
        }
    }
    for pgid in groups {
        // SAFETY: killpg has no memory effects.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// The installed reaper, if any.
pub fn get() -> Option<&'static Reaper> {
    REAPER.get()
}

impl Reaper {
    fn send(&self, op: char, pgid: i32) {
        let mut p = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(p, "{op}{pgid}");
    }

    /// A task's process group started.
    pub fn watch(&self, pgid: i32) {
        self.send('+', pgid)
    }

    /// A task's process group is gone (killed or exited).
    pub fn forget(&self, pgid: i32) {
        self.send('-', pgid)
    }
}
