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

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
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
    /// Set by the child when it could not exec: an errno value.
    err: c_int,
}

thread_local! {
    static STACK: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; CHILD_STACK_BYTES].into_boxed_slice());
}

/// The worker's environment as `KEY=VALUE` strings, with each key's length,
/// taken at the first program (the worker never changes its environment).
fn base_env() -> &'static [(usize, CString)] {
    static ENV: OnceLock<Vec<(usize, CString)>> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::vars_os()
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok().map(|c| (k.len(), c))
            })
            .collect()
    })
}

/// Signals whose disposition the child sets back to the default: those
/// with a handler installed in this process when it started its first
/// program, and SIGPIPE, which Rust programs ignore (as the standard
/// library does for its children).
fn signals_to_reset() -> &'static [c_int] {
    static SIGNALS: OnceLock<Vec<c_int>> = OnceLock::new();
    SIGNALS.get_or_init(|| {
        let mut reset = Vec::new();
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            // SAFETY: a query (no new action) into a zeroed struct we own.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
                continue; // signals glibc keeps for itself
            }
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if handled || (sig == libc::SIGPIPE && old.sa_sigaction == libc::SIG_IGN) {
                reset.push(sig);
            }
        }
        reset
    })
}

/// `/dev/null`, opened once, for every child's stdin.
fn dev_null() -> io::Result<RawFd> {
    static DEV_NULL: OnceLock<Result<OwnedFd, io::ErrorKind>> = OnceLock::new();
    match DEV_NULL.get_or_init(|| {
        std::fs::File::open("/dev/null")
            .map_err(|e| e.kind())
            .and_then(|f| above_stdio(f.into()).map_err(|e| e.kind()))
    }) {
        Ok(fd) => Ok(fd.as_raw_fd()),
        Err(kind) => Err(io::Error::new(*kind, "cannot open /dev/null")),
    }
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

/// Where to look for the program, in order, as `execvp` would.
fn candidates(program: &str, p: &Program) -> io::Result<Vec<CString>> {
    if program.contains('/') {
        return Ok(vec![c_string(program, "program")?]);
    }
    let own_path = p
        .env
        .get("PATH")
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| std::env::var_os("PATH").map(|s| s.as_bytes().to_vec()));
    let path = own_path.unwrap_or_else(|| PATH_DEFAULT.as_bytes().to_vec());
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
        let ok = (!a.die_with_parent
            || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == 0)
            && libc::setpgid(0, 0) == 0
            && libc::dup2(a.fds[0], 0) == 0
            && libc::dup2(a.fds[1], 1) == 1
            && libc::dup2(a.fds[2], 2) == 2
            && (a.cwd.is_null() || libc::chdir(a.cwd) == 0);
        if !ok {
            a.err = errno();
            libc::_exit(127);
        }
        for i in 0..a.reset_len {
            libc::sigaction(*a.reset.add(i), a.default_action, std::ptr::null_mut());
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, a.exec_mask, std::ptr::null_mut());
        let mut err = libc::ENOENT;
        let mut path = a.paths;
        while !(*path).is_null() {
            libc::execve(*path, a.argv, a.envp);
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => err = libc::EACCES,
                other => {
                    err = other;
                    break;
                }
            }
            path = path.add(1);
        }
        a.err = err;
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
        err: 0,
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
    // SAFETY: CLONE_PIDFD stored a fresh descriptor nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let mut child = Child {
        pid,
        pidfd,
        reaped: false,
    };
    // SAFETY: the child wrote it (or not) before it exec'd or exited.
    let child_err = unsafe { std::ptr::read_volatile(&args.err) };
    if child_err != 0 {
        // The child could not exec and has exited: reap it, report why.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        child.reaped = true;
        return Err(io::Error::from_raw_os_error(child_err));
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

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waiting for our own, unreaped child.
        let r = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
        if r == self.pid {
            self.reaped = true;
            Ok(Some(ExitStatus::from_raw(status)))
        } else if r == 0 {
            Ok(None)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits for the program to end and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // The pidfd turns readable when the process ends.
        // SAFETY: the pidfd stays open, the same descriptor, until `self`
        // is dropped, which is after `ready` (a local of this call).
        let ready =
            unsafe { AsyncFd::register_with_interest(self.pidfd.as_raw_fd(), Interest::READABLE) }?;
        loop {
            let mut guard = ready.readable().await?;
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            guard.clear_ready();
        }
    }
}

impl Drop for Child {
    /// A child dropped before it was reaped (its attempt timed out, was
    /// cancelled, or the worker is shutting down) is killed and reaped
    /// off this thread, so that it leaves no zombie behind.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: signalling our own unreaped child (its pid cannot have
        // been reused).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid;
        let reap = move || {
            let mut status = 0;
            // SAFETY: waiting for our own child, killed above.
            unsafe { libc::waitpid(pid, &mut status, 0) };
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(reap)),
            Err(_) => drop(std::thread::spawn(reap)),
        }
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
        let (o, e, status) = tokio::join!(
            stdout.read_to_string(&mut out),
            stderr.read_to_string(&mut err),
            child.wait()
        );
        o.unwrap();
        e.unwrap();
        (out, err, status.expect("reaped"))
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
