//! `--realtime`: the cluster's own threads under the kernel's real-time
//! policy, for machines where they share cores with other work.
//!
//! Under the normal policy a thread that wakes for a frame can wait for a
//! core behind whatever holds it: another process's time slice, or a kernel
//! thread, which on a kernel built without preemption keeps the core until it
//! yields (on this project's machine the memory monitor `kdamond` takes a core
//! for about 1.2 ms twice a second, and every task in flight waits that long;
//! `results/cluster.md`). A `SCHED_FIFO` thread runs as soon as a core is
//! free of normal threads and then until it blocks, so those waits go.
//!
//! The lowest real-time priority is enough for that and leaves every other
//! real-time thread (the kernel's own among them) ahead of ours. The policy is
//! set with `SCHED_RESET_ON_FORK`: processes that tasks start, and threads
//! created without [`enter`], run under the normal policy, so an `exec` task
//! cannot hold a core at real-time priority. In-process handlers (`spin`, say)
//! do run at it, on the worker's runtime threads; the kernel's real-time
//! throttling (95 % of each second by default) still leaves other processes a
//! share of every core.

use std::io;

/// `SCHED_FIFO` priority of the threads that enter: the lowest.
pub const PRIORITY: i32 = 1;

/// Why the real-time policy could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// The kernel allows it to root, to `CAP_SYS_NICE`, or up to the
    /// process's `RLIMIT_RTPRIO`.
    #[error(
        "--realtime: the kernel refused SCHED_FIFO ({0}): it needs root, the CAP_SYS_NICE capability, \
         or an RLIMIT_RTPRIO of at least {PRIORITY} (`ulimit -r`, or LimitRTPRIO= in a systemd unit)"
    )]
    NotPermitted(io::Error),
    /// Any other refusal.
    #[error("--realtime: cannot set SCHED_FIFO: {0}")]
    Failed(io::Error),
}

/// Puts the calling thread under `SCHED_FIFO` at [`PRIORITY`], with
/// `SCHED_RESET_ON_FORK`. Call it on every thread that should run so: a
/// thread it creates afterwards starts under the normal policy.
pub fn enter() -> Result<(), RealtimeError> {
    let param = libc::sched_param {
        sched_priority: PRIORITY,
    };
    // SAFETY: a system call on the calling thread (Linux takes pid 0 as the
    // calling thread) with a valid sched_param.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EPERM) => RealtimeError::NotPermitted(e),
        _ => RealtimeError::Failed(e),
    })
}

/// The calling thread's policy, without the reset-on-fork flag
/// (`libc::SCHED_OTHER`, `libc::SCHED_FIFO`, ...).
pub fn current_policy() -> io::Result<i32> {
    // SAFETY: a query about the calling thread.
    let p = unsafe { libc::sched_getscheduler(0) };
    if p < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p & !libc::SCHED_RESET_ON_FORK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case runs on a thread of its own: the policy belongs to the
    /// thread, and the test harness's threads must stay as they are.
    fn on_new_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(f).join().expect("thread")
    }

    fn permitted() -> bool {
        on_new_thread(|| enter().is_ok())
    }

    #[test]
    fn a_thread_that_enters_runs_at_sched_fifo() {
        if !permitted() {
            eprintln!("skipped: this process may not use SCHED_FIFO");
            return;
        }
        let policy = on_new_thread(|| {
            enter().expect("enter");
            current_policy().expect("policy")
        });
        assert_eq!(policy, libc::SCHED_FIFO);
    }

    #[test]
    fn threads_created_after_entering_run_under_the_normal_policy() {
        if !permitted() {
            eprintln!("skipped: this process may not use SCHED_FIFO");
            return;
        }
        let (parent, child) = on_new_thread(|| {
            enter().expect("enter");
            let child = std::thread::spawn(|| current_policy().expect("policy"))
                .join()
                .expect("child");
            (current_policy().expect("policy"), child)
        });
        assert_eq!(parent, libc::SCHED_FIFO);
        assert_eq!(child, libc::SCHED_OTHER);
    }
}
