//! The reaper: a small process forked by the worker at start-up that kills
//! every running task's process group when the worker dies, however it dies.
//!
//! The worker and the reaper share one page-aligned table of process groups
//! (an anonymous `MAP_SHARED` mapping made before the fork). Starting a task
//! takes a free slot and stores its group there; ending it clears the slot:
//! two atomic stores, no system call and no wake-up of the reaper per task
//! (the first design told the reaper over a pipe, which cost six writes and
//! two context switches per task, measured in `results/cluster.md`).
//! The reaper sleeps in `read` on a pipe whose only write end the worker
//! holds. When the worker dies, even by `kill -9`, the kernel closes that end;
//! the reaper reads end-of-file, kills every group still in the table
//! (grandchildren included) and exits. Without a reaper, a task's program
//! is only killed with the worker thread that started it
//! (`PR_SET_PDEATHSIG`), and its own children not at all.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most task process groups the table holds at once. A worker runs at most
/// its slots of `exec` tasks at a time; past this many, an `exec` task fails
/// with a reason instead of running unguarded. 64 KiB of shared memory,
/// touched only as far as it is used.
pub const GROUPS_MAX: usize = 16 * 1024;

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The worker's side: the shared table and which of its slots are free.
pub struct Reaper {
    table: &'static [AtomicI32],
    free: Mutex<Vec<u32>>,
    /// The reaper process, to notice if it dies (see [`supervise`]).
    pid: libc::pid_t,
    pidfd: Option<std::os::fd::OwnedFd>,
    lost: AtomicBool,
    supervised: AtomicBool,
}

/// A slot of the table held by one running task; cleared when dropped.
pub struct Slot {
    reaper: &'static Reaper,
    index: u32,
}

impl Slot {
    /// Where the task's process group goes (written by the program's child
    /// process itself, before it execs); from then on the reaper kills the
    /// group if the worker dies.
    pub fn cell(&self) -> &AtomicI32 {
        &self.reaper.table[self.index as usize]
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.reaper.table[self.index as usize].store(0, Ordering::Release);
        self.reaper
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

/// Forks the reaper and installs it for this process's `exec` tasks.
///
/// # Safety
/// The process must be single-threaded when this is called (before any
/// runtime or thread starts): the child runs Rust code after `fork`.
pub unsafe fn install() -> io::Result<()> {
    let bytes = GROUPS_MAX * std::mem::size_of::<AtomicI32>();
    // SAFETY: a fresh anonymous mapping; nothing else refers to it.
    let table = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if table == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is GROUPS_MAX zeroed, aligned i32s that live for
    // the rest of the process (never unmapped); AtomicI32 has i32's layout.
    let table: &'static [AtomicI32] =
        unsafe { std::slice::from_raw_parts(table.cast::<AtomicI32>(), GROUPS_MAX) };
    let mut fds = [0i32; 2];
    // SAFETY: a valid two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the mapping made above, used by nothing.
        unsafe { libc::munmap(table.as_ptr() as *mut libc::c_void, bytes) };
        return Err(e);
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: the descriptors and the mapping made above, used by
            // nothing.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
                libc::munmap(table.as_ptr() as *mut libc::c_void, bytes);
            }
            Err(e)
        }
        0 => {
            // The reaper. Without the write end, end-of-file means the worker
            // is gone. Signals meant for the worker are not meant for it: a
            // session of its own keeps it out of the terminal's hang-up and
            // the worker's group, and every signal that can be is blocked,
            // so that only SIGKILL aimed at it ends it before its job.
            // SAFETY: closing our copy of the write end; process-level calls
            // on plain data we own.
            unsafe {
                libc::close(write_end);
                libc::setsid();
                let mut all: libc::sigset_t = std::mem::zeroed();
                libc::sigfillset(&mut all);
                libc::sigprocmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
            }
            rename_self(REAPER_NAME);
            wait_for_end(read_end);
            for entry in table {
                let pgid = entry.load(Ordering::Acquire);
                if pgid > 0 {
                    // SAFETY: killpg has no memory effects.
                    unsafe {
                        libc::killpg(pgid, libc::SIGKILL);
                    }
                }
            }
            // SAFETY: leave without running the parent's atexit handlers.
            unsafe { libc::_exit(0) }
        }
        pid => {
            // SAFETY: the read end belongs to the reaper now. The write end
            // stays open, unused, until this process ends.
            unsafe {
                libc::close(read_end);
            }
            // SAFETY: a pidfd for our own child; owned below if it opened.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
            // SAFETY: a fresh descriptor nothing else owns.
            let pidfd = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) });
            let mut reaper = Reaper::over(table);
            reaper.pid = pid;
            reaper.pidfd = pidfd;
            let _ = REAPER.set(reaper);
            Ok(())
        }
    }
}

/// The reaper's process name (`comm`) and command line. A name of its own:
/// with the worker's, a kill aimed at the worker by name (`pkill -9 -f
/// 'runner worker --id w5'`, `killall -9 runner`) took the reaper too, and
/// the tasks' other processes ran on (found in the lab).
pub const REAPER_NAME: &[u8] = b"runner-reaper";

extern "C" {
    /// glibc's (and musl's) pointer to `argv[0]`, whose bytes, with the
    /// other arguments after them, are what `/proc/PID/cmdline` shows.
    static mut program_invocation_name: *mut libc::c_char;
}

/// Gives this process `name` as its `comm` and its command line. The
/// command line is rewritten in place, over the bytes of `argv`, as
/// `setproctitle` does. Only in the forked reaper: its memory is its own.
fn rename_self(name: &[u8]) {
    let mut comm = [0u8; 16];
    let n = name.len().min(comm.len() - 1);
    comm[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, comm.as_ptr() as libc::c_ulong, 0, 0, 0) };
    // SAFETY: reading a pointer glibc set at start-up and never changes.
    let start = unsafe { program_invocation_name }.cast::<u8>();
    if start.is_null() {
        return;
    }
    // The arguments' bytes, each with its NUL: one block from argv[0].
    let len: usize = std::env::args_os().map(|a| a.len() + 1).sum();
    if len == 0 {
        return;
    }
    let n = name.len().min(len - 1);
    // SAFETY: `len` bytes from argv[0] are argv's strings, contiguous, ours
    // (this process is a fork; nothing else reads them but the kernel).
    unsafe {
        std::ptr::write_bytes(start, 0, len);
        std::ptr::copy_nonoverlapping(name.as_ptr(), start, n);
    }
}

/// Blocks until the pipe's write end is closed everywhere (the worker died).
fn wait_for_end(fd: i32) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a buffer we own, within its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            return;
        }
    }
}

/// The installed reaper, if any and still alive.
pub fn get() -> Option<&'static Reaper> {
    REAPER.get().filter(|r| !r.lost.load(Ordering::Acquire))
}

/// Starts, once, a task that notices the reaper's death (it blocks every
/// signal, so only a SIGKILL aimed at it or the OOM killer ends it): the log
/// says so, and from then on `exec` tasks fall back to being killed with the
/// worker thread that started them (`PR_SET_PDEATHSIG`, their own children
/// not covered). Needs the async runtime.
pub fn supervise() {
    let Some(r) = REAPER.get() else { return };
    let Some(pidfd) = &r.pidfd else { return };
    if r.supervised.swap(true, Ordering::AcqRel) {
        return;
    }
    let fd = pidfd.as_raw_fd();
    tokio::spawn(async move {
        // SAFETY: the pidfd lives in the static reaper, open and the same
        // descriptor for the rest of the process.
        let ready = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        let Ok(ready) = ready else {
            tracing::warn!("cannot watch the task reaper; its death would go unnoticed");
            return;
        };
        let _ = ready.readable().await;
        r.lost.store(true, Ordering::Release);
        // SAFETY: reaping our own child, which has ended.
        unsafe { libc::waitpid(r.pid, &mut 0, 0) };
        tracing::error!(
            pid = r.pid,
            "the task reaper died: exec tasks started from now on are killed with this worker only \
             by PR_SET_PDEATHSIG, and their own children not at all; restart the worker to get it back"
        );
    });
}

impl Reaper {
    /// The worker's side over `table`, every slot free.
    fn over(table: &'static [AtomicI32]) -> Reaper {
        Reaper {
            table,
            free: Mutex::new((0..table.len() as u32).rev().collect()),
            pid: 0,
            pidfd: None,
            lost: AtomicBool::new(false),
            supervised: AtomicBool::new(false),
        }
    }

    /// Takes a free slot for a task about to start, or `None` when
    /// [`GROUPS_MAX`] tasks already hold one.
    pub fn reserve(&'static self) -> Option<Slot> {
        let index = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        Some(Slot {
            reaper: self,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked(slots: usize) -> &'static Reaper {
        let table: Vec<AtomicI32> = (0..slots).map(|_| AtomicI32::new(0)).collect();
        Box::leak(Box::new(Reaper::over(Box::leak(table.into_boxed_slice()))))
    }

    fn held(r: &Reaper) -> Vec<i32> {
        r.table
            .iter()
            .map(|e| e.load(Ordering::Acquire))
            .filter(|p| *p != 0)
            .collect()
    }

    #[test]
    fn a_started_group_is_in_the_table_until_its_slot_is_dropped() {
        let r = leaked(4);
        let slot = r.reserve().expect("a free slot");
        slot.cell().store(4242, Ordering::Release);
        assert_eq!(held(r), vec![4242]);
        drop(slot);
        assert!(held(r).is_empty());
    }

    #[test]
    fn a_full_table_refuses_a_slot_until_one_is_given_back() {
        let r = leaked(2);
        let a = r.reserve().expect("first");
        let b = r.reserve().expect("second");
        assert!(r.reserve().is_none());
        drop(a);
        let c = r.reserve().expect("the freed one");
        c.cell().store(7, Ordering::Release);
        b.cell().store(8, Ordering::Release);
        let mut groups = held(r);
        groups.sort();
        assert_eq!(groups, vec![7, 8]);
    }
}
