//! Starting an `exec` task's program: `clone(CLONE_VM | CLONE_VFORK)` and
//! `execve`, as glibc's `posix_spawn` does, without the parts of it that
//! cost the most per program.
//!
//! With `std::process::Command` (which uses `posix_spawn`), every program
//! paid for a child stack mapped and unmapped, 64 `sigaction` calls in the
//! child to reset every handler, a copy of the worker's whole environment
//! into a map (because `RUNNER_TASK_ID` and `RUNNER_ATTEMPT` are added), a
//! `/dev/null` opened, and a separate `pidfd_open`; `results/cluster.md` has
//! the profile. Here the child runs on a stack kept per thread, resets only
//! the handlers this process had installed at its first program (exec resets
//! caught signals by itself; the reset only covers a signal arriving between
//! the child's unblocking and its exec), gets the environment from strings
//! built once, and `CLONE_PIDFD` hands back the pidfd with the pid.
//!
//! The child shares the worker's memory until it execs (the parent thread is
//! suspended meanwhile), so it only makes system calls: no allocation, no
//! lock, no panic. Everything it needs is prepared before the clone.
//!
//! A program is waited for without being reaped ([`Child::exited`]): while
//! it is a zombie its pid, and so its process group's id, cannot be given to
//! another process, so what is left of the group can be killed safely before
//! [`Child::reap`]. (`pid_max` is 32,768 on many machines; at thousands of
//! programs a second, ids come round again within seconds.) Needs Linux 5.3
//! (`CLONE_PIDFD` and polling a pidfd).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use libc::{c_char, c_int, c_void};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::unix::pipe;

/// Bytes of stack for a child between clone and exec: it only makes a
/// dozen system calls through libc.
const CHILD_STACK_BYTES: usize = 64 * 1024;

/// Where the program is looked up when neither the task nor the worker has
/// a `PATH` (glibc's default).
const PATH_DEFAULT: &str = "/bin:/usr/bin";

/// A program to start.
pub struct Program<'a> {
    /// Program and arguments; the program is looked up in `PATH` unless it
    /// contains a `/`.
    pub argv: &'a [String],
    /// Variables added to (or replacing) the worker's environment.
    pub env: &'a HashMap<String, String>,
    /// The task's own variables, which win over `env`.
    pub task_env: [(&'static str, String); 2],
    /// Working directory.
    pub cwd: Option<&'a str>,
    /// Ask the kernel to kill the program when the worker thread that
    /// started it dies (for a worker without a reaper).
    pub die_with_parent: bool,
    /// Where the child writes its pid (its process group) before it execs:
    /// the reaper's slot, so that no moment passes in which the program
    /// runs and a worker killed then would leave it behind.
    pub register: Option<&'a AtomicI32>,
}

/// A started program: its pid and pidfd, and its stdout and stderr.
pub struct Started {
    /// The process; killed and reaped if dropped before it was waited for.
    pub child: Child,
    /// The read end of its stdout.
    pub stdout: pipe::Receiver,
    /// The read end of its stderr.
    pub stderr: pipe::Receiver,
}

/// A child process that has not been reaped yet.
pub struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    reaped: bool,
}

/// What the child reads, in the parent's memory (shared until exec).
struct ChildArgs {
    argv: *const *const c_char,
    envp: *const *const c_char,
    /// Paths to try, in order, null-terminated.
    paths: *const *const c_char,
    /// Null when the working directory stays.
    cwd: *const c_char,
    /// Descriptors to become 0, 1 and 2 (all above 2).
    fds: [c_int; 3],
    reset: *const c_int,
    reset_len: usize,
    default_action: *const libc::sigaction,
    exec_mask: *const libc::sigset_t,
    die_with_parent: bool,
    /// Null, or where the child stores its pid.
    register: *const AtomicI32,
    /// Set by the child when it could not exec: an errno value, and the
    /// step that failed (`STEP_*`).
    err: c_int,
    failed_step: c_int,
}

/// Steps of the child that can fail, for the error message.
const STEP_SETUP: c_int = 1;
const STEP_CHDIR: c_int = 2;
const STEP_EXEC: c_int = 3;

/// Signals whose handlers the child resets if it finds one installed,
/// besides those installed at the first program: the ones programs and
/// libraries commonly catch (see [`signals_to_reset`]).
const COMMONLY_CAUGHT: [c_int; 10] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGCHLD,
    libc::SIGWINCH,
    libc::SIGALRM,
    libc::SIGPIPE,
];

thread_local! {
    static STACK: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; CHILD_STACK_BYTES].into_boxed_slice());
}

/// Variables of the worker's environment that its programs do not get: a
/// task's program is the submitter's code, and the cluster's secret would
/// let it pose as the master to every worker.
const SCRUBBED_ENV: &[&str] = &[crate::proto::handshake::SECRET_ENV];

/// The worker's environment as `KEY=VALUE` strings, with each key's length,
/// taken at the first program (the worker never changes its environment),
/// less [`SCRUBBED_ENV`].
fn base_env() -> &'static [(usize, CString)] {
    static ENV: OnceLock<Vec<(usize, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter(|(k, _)| !SCRUBBED_ENV.iter().any(|s| k.as_bytes() == s.as_bytes()))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok().map(|c| (k.len(), c))
            })
            .collect()
    })
}

/// Signals the child looks at before exec: those with a handler installed
/// in this process when it started its first program, and
/// [`COMMONLY_CAUGHT`] (a handler installed later, say by a program that
/// embeds a worker, is most likely on one of these). The child resets each
/// that has a handler, and SIGPIPE if ignored (Rust programs ignore it; the
/// standard library resets it for its children too); an ignored signal
/// otherwise stays ignored, as with `posix_spawn`. Exec resets handlers by
/// itself; this only matters for a signal arriving between the child's
/// unblocking and its exec, which must not run the worker's handler in the
/// child, on the worker's memory.
fn signals_to_reset() -> &'static [c_int] {
    static SIGNALS: OnceLock<Vec<c_int>> = OnceLock::new();
    SIGNALS.get_or_init(|| {
        let mut signals = COMMONLY_CAUGHT.to_vec();
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP || signals.contains(&sig) {
                continue;
            }
            // SAFETY: a query (no new action) into a zeroed struct we own.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                continue; // signals glibc keeps for itself
            }
            if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                signals.push(sig);
            }
        }
        signals
    })
}

/// `/dev/null`, opened once, for every child's stdin. A failure is not
/// kept: the next program tries again.
fn dev_null() -> io::Result<RawFd> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let file = std::fs::File::open("/dev/null")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/null: {e}")))?;
    let fd = above_stdio(file.into())?;
    // Another thread may have won the race; its descriptor is kept, ours closed.
    Ok(DEV_NULL.get_or_init(|| fd).as_raw_fd())
}

/// `fd` moved above 0, 1 and 2 if it is one of them (a worker started with
/// a closed stdio would get them from `pipe2`), so that the child's `dup2`s
/// cannot overwrite a source they still need.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: duplicating a descriptor we own; the result is owned below.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// A pipe: (read end, non-blocking; write end, blocking), both close-on-exec.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: a valid two-element array for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nothing else owns.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((read, above_stdio(write)?))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

fn c_string(s: &str, what: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| invalid(format!("{what} {s:?} contains a NUL byte")))
}

/// The environment block: the worker's variables except those replaced,
/// then the replacements (the task's own last, so they win).
fn environment(p: &Program) -> io::Result<(Vec<CString>, Vec<*const c_char>)> {
    let mut own: Vec<(&str, &str)> = p
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    own.retain(|(k, _)| !p.task_env.iter().any(|(t, _)| t == k));
    own.extend(p.task_env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut strings = Vec::with_capacity(own.len());
    for (k, v) in &own {
        if k.is_empty() || k.contains('=') {
            return Err(invalid(format!(
                "environment variable name {k:?} is empty or contains '='"
            )));
        }
        strings.push(c_string(&format!("{k}={v}"), "environment variable")?);
    }
    let base = base_env();
    let mut ptrs = Vec::with_capacity(base.len() + strings.len() + 1);
    for (key_len, kv) in base {
        let key = &kv.as_bytes()[..*key_len];
        if !own.iter().any(|(k, _)| k.as_bytes() == key) {
            ptrs.push(kv.as_ptr());
        }
    }
    ptrs.extend(strings.iter().map(|s| s.as_ptr()));
    ptrs.push(std::ptr::null());
    Ok((strings, ptrs))
}

/// Where to look for the program, in order, as `posix_spawnp` does (a file
/// without `#!` is not retried with `/bin/sh`).
fn candidates(program: &str, p: &Program) -> io::Result<Vec<CString>> {
    if program.is_empty() {
        return Err(invalid("the program name is empty".into()));
    }
    if program.contains('/') {
        return Ok(vec![c_string(program, "program")?]);
    }
    let path: &[u8] = match p.env.get("PATH") {
        Some(own) => own.as_bytes(),
        None => base_env()
            .iter()
            .find(|(key_len, kv)| &kv.as_bytes()[..*key_len] == b"PATH")
            .map_or(PATH_DEFAULT.as_bytes(), |(key_len, kv)| {
                &kv.as_bytes()[key_len + 1..]
            }),
    };
    path.split(|b| *b == b':')
        .map(|dir| {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            let mut full = dir.to_vec();
            full.push(b'/');
            full.extend_from_slice(program.as_bytes());
            CString::new(full).map_err(|_| invalid("PATH holds a NUL byte".into()))
        })
        .collect()
}

/// The child: from clone to exec. Only system calls; never returns.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's ChildArgs, alive and unchanged while the
    // parent is suspended (CLONE_VFORK); every pointer in it is valid and
    // every list is terminated or sized as it says.
    unsafe {
        let a = &mut *(arg as *mut ChildArgs);
        let errno = || *libc::__errno_location();
        let fail = |a: &mut ChildArgs, step: c_int| -> ! {
            a.err = errno();
            a.failed_step = step;
            libc::_exit(127)
        };
        if a.die_with_parent
            && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
        {
            fail(a, STEP_SETUP);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(a, STEP_SETUP);
        }
        if !a.register.is_null() {
            (*a.register).store(libc::getpid(), Ordering::Release);
        }
        for (target, &source) in a.fds.iter().enumerate() {
            if libc::dup2(source, target as c_int) < 0 {
                fail(a, STEP_SETUP);
            }
        }
        if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
            fail(a, STEP_CHDIR);
        }
        for i in 0..a.reset_len {
            let sig = *a.reset.add(i);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if handled || (sig == libc::SIGPIPE && old.sa_sigaction == libc::SIG_IGN) {
                libc::sigaction(sig, a.default_action, std::ptr::null_mut());
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, a.exec_mask, std::ptr::null_mut());
        let mut err = libc::ENOENT;
        let mut path = a.paths;
        while !(*path).is_null() {
            libc::execve(*path, a.argv, a.envp);
            match errno() {
                // Not here: try the next directory, as glibc does.
                libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
                libc::EACCES => err = libc::EACCES,
                other => {
                    err = other;
                    break;
                }
            }
            path = path.add(1);
        }
        a.err = err;
        a.failed_step = STEP_EXEC;
        libc::_exit(127)
    }
}

/// Starts `p` in a process group of its own, stdin from `/dev/null`, stdout
/// and stderr into pipes.
pub fn spawn(p: &Program) -> io::Result<Started> {
    let Some(program) = p.argv.first() else {
        return Err(invalid("argv is empty".into()));
    };
    let argv: Vec<CString> = p
        .argv
        .iter()
        .map(|a| c_string(a, "argument"))
        .collect::<io::Result<_>>()?;
    let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let (_env_strings, envp) = environment(p)?;
    let paths = candidates(program, p)?;
    let mut path_ptrs: Vec<*const c_char> = paths.iter().map(|a| a.as_ptr()).collect();
    path_ptrs.push(std::ptr::null());
    let cwd = p
        .cwd
        .map(|d| c_string(d, "working directory"))
        .transpose()?;
    let stdin = dev_null()?;
    let (out_read, out_write) = output_pipe()?;
    let (err_read, err_write) = output_pipe()?;
    let reset = signals_to_reset();
    // SAFETY: plain-data structs, zeroed then set through libc.
    let (mut default_action, mut exec_mask, mut all, mut saved): (
        libc::sigaction,
        libc::sigset_t,
        libc::sigset_t,
        libc::sigset_t,
    ) = unsafe { std::mem::zeroed() };
    default_action.sa_sigaction = libc::SIG_DFL;
    // SAFETY: initialising sets we own.
    unsafe {
        libc::sigemptyset(&mut exec_mask);
        libc::sigfillset(&mut all);
    }
    let mut args = ChildArgs {
        argv: argv_ptrs.as_ptr(),
        envp: envp.as_ptr(),
        paths: path_ptrs.as_ptr(),
        cwd: cwd.as_deref().map_or(std::ptr::null(), CStr::as_ptr),
        fds: [stdin, out_write.as_raw_fd(), err_write.as_raw_fd()],
        reset: reset.as_ptr(),
        reset_len: reset.len(),
        default_action: &default_action,
        exec_mask: &exec_mask,
        die_with_parent: p.die_with_parent,
        register: p
            .register
            .map_or(std::ptr::null(), |r| r as *const AtomicI32),
        err: 0,
        failed_step: 0,
    };
    let mut pidfd: c_int = -1;
    let pid = STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        let end = stack.as_mut_ptr_range().end as usize;
        let top = (end & !15) as *mut c_void;
        // No signal may run a handler in the child while it shares our
        // memory: block them all here; the child unblocks right before exec.
        // SAFETY: masks we own; the clone gets a stack of its own that stays
        // borrowed (and so alive) until the child has exec'd or exited, and
        // args that live until then too.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut saved);
            let pid = libc::clone(
                child,
                top,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                (&mut args as *mut ChildArgs).cast::<c_void>(),
                &mut pidfd as *mut c_int,
            );
            let clone_err = io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut());
            if pid < 0 {
                Err(clone_err)
            } else {
                Ok(pid)
            }
        }
    })?;
    if pidfd < 0 {
        // A kernel before 5.2 ignores CLONE_PIDFD.
        // SAFETY: our own child, not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut 0, 0);
        }
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no CLONE_PIDFD (Linux 5.3 or later is needed for exec tasks)",
        ));
    }
    // SAFETY: CLONE_PIDFD stored a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut child = Child {
        pid,
        pidfd,
        reaped: false,
    };
    // SAFETY: the child wrote them (or not) before it exec'd or exited.
    let (child_err, step) = unsafe {
        (
            std::ptr::read_volatile(&args.err),
            std::ptr::read_volatile(&args.failed_step),
        )
    };
    if child_err != 0 {
        // The child could not exec and has exited: reap it, report why.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        child.reaped = true;
        let e = io::Error::from_raw_os_error(child_err);
        return Err(match step {
            STEP_CHDIR => io::Error::new(
                e.kind(),
                format!("cannot change to directory {:?}: {e}", p.cwd.unwrap_or("")),
            ),
            STEP_SETUP => io::Error::new(e.kind(), format!("cannot set the program up: {e}")),
            _ => e,
        });
    }
    drop((out_write, err_write));
    Ok(Started {
        child,
        stdout: pipe::Receiver::from_owned_fd_unchecked(out_read)?,
        stderr: pipe::Receiver::from_owned_fd_unchecked(err_read)?,
    })
}

impl Child {
    /// The process id (also its process group id).
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Whether the program has ended, leaving it unreaped.
    fn has_exited(&self) -> io::Result<bool> {
        // SAFETY: a zeroed siginfo we own; waiting (without reaping) for our
        // own unreaped child, whose pid cannot have been reused.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: waitid filled it in; with WNOHANG a zero pid means
        // "still running".
        Ok(unsafe { info.si_pid() } != 0)
    }

    /// Waits until the program has ended, without reaping it: until
    /// [`Child::reap`], its pid and its process group's id stay taken.
    pub async fn exited(&mut self) -> io::Result<()> {
        if self.has_exited()? {
            return Ok(());
        }
        // The pidfd turns readable when the process ends.
        // SAFETY: the pidfd stays open, the same descriptor, until `self`
        // is dropped, which is after `ready` (a local of this call).
        let ready =
            unsafe { AsyncFd::register_with_interest(self.pidfd.as_raw_fd(), Interest::READABLE) }?;
        loop {
            let mut guard = ready.readable().await?;
            if self.has_exited()? {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Reaps the program (waiting for it if it has not ended) and gives its
    /// exit status.
    pub fn reap(&mut self) -> io::Result<ExitStatus> {
        let mut status = 0;
        // SAFETY: waiting for our own, unreaped child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, 0) };
        if r == self.pid {
            self.reaped = true;
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECHILD) {
            // Someone else reaped it (a host program ignoring SIGCHLD).
            self.reaped = true;
        }
        Err(e)
    }
}

impl Drop for Child {
    /// A child dropped before it was reaped (its attempt timed out, was
    /// cancelled, or the worker is shutting down) is killed through its
    /// pidfd (never a reused pid) and reaped by [`reap_later`], so that it
    /// leaves no zombie behind.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: a signal through our own pidfd; no memory effects.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        let mut status = 0;
        // SAFETY: waiting for our own child, without blocking.
        if unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } != 0 {
            return; // reaped now, or reaped by someone else (ECHILD)
        }
        reap_later(self.pid);
    }
}

/// Reaps killed children on a thread of its own, so that a drop never
/// blocks and works without (or after) the async runtime.
fn reap_later(pid: libc::pid_t) {
    static QUEUE: OnceLock<Option<std::sync::mpsc::Sender<libc::pid_t>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<libc::pid_t>();
        std::thread::Builder::new()
            .name("exec-reaper".into())
            .spawn(move || {
                for pid in rx {
                    // SAFETY: waiting for our own child, killed before it
                    // was queued (unreaped, so its pid is still its own).
                    unsafe { libc::waitpid(pid, &mut 0, 0) };
                }
            })
            .ok()
            .map(|_| tx)
    });
    match queue {
        Some(tx) => {
            let _ = tx.send(pid);
        }
        None => tracing::warn!(pid, "no thread to reap a killed exec task's process; it stays a zombie until the worker exits"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn program<'a>(argv: &'a [String], env: &'a HashMap<String, String>) -> Program<'a> {
        Program {
            argv,
            env,
            task_env: [
                ("RUNNER_TASK_ID", "42".into()),
                ("RUNNER_ATTEMPT", "2".into()),
            ],
            cwd: None,
            die_with_parent: false,
            register: None,
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Runs `p` to the end: (stdout, stderr, status).
    async fn run(p: &Program<'_>) -> (String, String, ExitStatus) {
        let Started {
            mut child,
            mut stdout,
            mut stderr,
        } = spawn(p).expect("starts");
        let (mut out, mut err) = (String::new(), String::new());
        let (o, e, exited) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err),
            child.exited()
        );
        o.unwrap();
        e.unwrap();
        exited.expect("ended");
        (out, err, child.reap().expect("reaped"))
    }

    #[tokio::test]
    async fn stdout_stderr_and_the_exit_status_come_back_separately() {
        let env = HashMap::new();
        let argv = sh("echo out; echo err >&2; exit 3");
        let (out, err, status) = run(&program(&argv, &env)).await;
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn the_program_gets_the_workers_environment_the_tasks_variables_and_its_own() {
        let env = HashMap::from([
            ("EXTRA".to_string(), "yes".to_string()),
            ("RUNNER_TASK_ID".to_string(), "not the task's".to_string()),
        ]);
        let argv = sh("echo $RUNNER_TASK_ID $RUNNER_ATTEMPT $EXTRA; echo $PATH");
        let (out, _, status) = run(&program(&argv, &env)).await;
        assert!(status.success());
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(out, format!("42 2 yes\n{path}\n"));
    }

    #[tokio::test]
    async fn the_program_leads_its_own_process_group() {
        let env = HashMap::new();
        // Field 5 of /proc/PID/stat is the process group.
        let argv = sh("echo $$ $(cut -d' ' -f5 /proc/$$/stat)");
        let (out, _, status) = run(&program(&argv, &env)).await;
        assert!(status.success());
        let ids: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(ids[0], ids[1], "pid and process group: {out}");
    }

    #[tokio::test]
    async fn the_program_starts_with_no_blocked_signals_and_sigpipe_not_ignored() {
        let env = HashMap::new();
        // grep reads its own status (a shell would reset its mask itself).
        // SIGPIPE is bit 13 of SigIgn: Rust programs ignore it, their
        // children must not.
        let argv: Vec<String> = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
            .map(String::from)
            .to_vec();
        let (out, _, status) = run(&program(&argv, &env)).await;
        assert!(status.success());
        assert_eq!(out.lines().count(), 2, "{out}");
        for line in out.lines() {
            let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            if line.starts_with("SigBlk") {
                assert_eq!(mask, 0, "{line}");
            } else {
                assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{line}");
            }
        }
    }

    #[tokio::test]
    async fn the_working_directory_is_the_tasks() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::new();
        let argv = vec!["pwd".to_string()];
        let mut p = program(&argv, &env);
        let want = dir.path().canonicalize().unwrap();
        let cwd = want.to_str().unwrap().to_string();
        p.cwd = Some(&cwd);
        let (out, _, _) = run(&p).await;
        assert_eq!(out.trim(), cwd);
    }

    #[tokio::test]
    async fn a_missing_program_or_directory_is_an_error_not_a_child() {
        let env = HashMap::new();
        let argv = vec!["no-such-program-anywhere".to_string()];
        let e = spawn(&program(&argv, &env)).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let argv = vec!["true".to_string()];
        let mut p = program(&argv, &env);
        p.cwd = Some("/no/such/directory");
        let e = spawn(&p).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(
            e.to_string()
                .contains("cannot change to directory \"/no/such/directory\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_child_registers_its_group_before_it_runs_the_program() {
        let env = HashMap::new();
        let argv = vec!["true".to_string()];
        let cell = AtomicI32::new(0);
        let mut p = program(&argv, &env);
        p.register = Some(&cell);
        let mut started = spawn(&p).expect("starts");
        assert_eq!(cell.load(Ordering::Acquire), started.child.id());
        started.child.exited().await.unwrap();
        started.child.reap().unwrap();
    }

    #[tokio::test]
    async fn an_ended_program_keeps_its_pid_until_it_is_reaped() {
        let env = HashMap::new();
        let argv = vec!["true".to_string()];
        let Started { mut child, .. } = spawn(&program(&argv, &env)).expect("starts");
        child.exited().await.unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        let state = std::fs::read_to_string(&stat).expect("still in the process table");
        assert_eq!(state.split_whitespace().nth(2), Some("Z"), "{state}");
        assert!(child.reap().unwrap().success());
        assert!(!std::path::Path::new(&stat).exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_executable_is_permission_denied() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let env = HashMap::new();
        let argv = vec![file.to_str().unwrap().to_string()];
        let e = spawn(&program(&argv, &env)).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    }

    #[tokio::test]
    async fn a_nul_byte_or_a_bad_variable_name_is_invalid_input() {
        let env = HashMap::new();
        let argv = vec!["echo".to_string(), "a\0b".to_string()];
        let e = spawn(&program(&argv, &env)).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let env = HashMap::from([("A=B".to_string(), "c".to_string())]);
        let argv = vec!["true".to_string()];
        let e = spawn(&program(&argv, &env)).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }

    #[tokio::test]
    async fn a_child_dropped_while_running_is_killed_and_reaped() {
        let env = HashMap::new();
        let argv = vec!["sleep".to_string(), "100".to_string()];
        let started = spawn(&program(&argv, &env)).expect("starts");
        let pid = started.child.id();
        drop(started);
        // Gone from the process table: killed, and not left a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(std::time::Instant::now() < deadline, "{pid} still there");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
