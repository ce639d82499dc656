//! The deadline of a policy call, counted in CPU time rather than wall-clock time.
//!
//! wasmtime's epoch interruption works on wall-clock time: the epoch ticker advances every
//! [`EPOCH_TICK`] whatever the worker thread was doing. On a busy machine, or in a container
//! throttled by its CPU quota, a worker can be descheduled for longer than the deadline in the
//! middle of a 1 µs call. Stopping that call would count a trap against a correct policy and
//! throw away its instance's state (the benchmark on the 2-core development machine saw it:
//! one spurious trap in about a million calls at 100 clients).
//!
//! So the wall-clock expiry only starts the check. From then on the call may use the deadline
//! once more, counted in its thread's CPU time, and the epoch callback looks at that time at
//! every later tick. A call that merely waited for a CPU ends within microseconds once it runs
//! again. A runaway is stopped after about twice the deadline of CPU, plus up to two ticks.
//!
//! The thread's CPU clock is a system call, so it is read only when a call overruns, never on
//! the ordinary path; arming a call is two stores.

use super::ticker::EPOCH_TICK;
use std::time::Duration;

/// The deadline state of the call running in one Store.
#[derive(Debug, Default)]
pub struct CpuDeadline {
    /// CPU time the call may use after its wall-clock deadline passed.
    budget: Duration,
    /// The thread's CPU time when the wall-clock deadline passed, in this call.
    overrun_at: Option<Duration>,
}

impl CpuDeadline {
    /// Arms the check for a call allowed `ticks` epochs (see `deadline_ticks`).
    #[inline]
    pub fn arm(&mut self, ticks: u64) {
        let ticks = u32::try_from(ticks.saturating_sub(1).max(1)).unwrap_or(u32::MAX);
        self.budget = EPOCH_TICK.saturating_mul(ticks);
        self.overrun_at = None;
    }

    /// At an epoch expiry during the call, with the thread's CPU time now: true to let the call
    /// go on for another tick, false to stop it.
    pub fn on_expiry(&mut self, cpu_now: Duration) -> bool {
        match self.overrun_at {
            None => {
                self.overrun_at = Some(cpu_now);
                true
            }
            Some(at) => cpu_now.saturating_sub(at) < self.budget,
        }
    }

    /// Whether the running (or last) call passed its wall-clock deadline.
    #[cfg(test)]
    pub fn overran(&self) -> bool {
        self.overrun_at.is_some()
    }
}

/// CPU time used by the calling thread; `None` if the clock cannot be read (never seen on
/// Linux), and then the caller stops the call at its wall-clock deadline, as without this check.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_call_that_waited_for_a_cpu_goes_on() {
        let mut d = CpuDeadline::default();
        // A 5 ms deadline. It passes while the thread is descheduled: the check starts.
        d.arm(2);
        assert!(d.on_expiry(100 * MS));
        // Ticks later the thread has hardly run: the call goes on.
        assert!(d.on_expiry(100 * MS + Duration::from_micros(3)));
        assert!(d.on_expiry(101 * MS));
    }

    #[test]
    fn a_call_that_keeps_running_is_stopped_after_the_budget() {
        let mut d = CpuDeadline::default();
        d.arm(2);
        assert!(d.on_expiry(100 * MS));
        assert!(d.on_expiry(104 * MS));
        assert!(!d.on_expiry(105 * MS));
        assert!(!d.on_expiry(110 * MS));
    }

    #[test]
    fn each_call_starts_afresh_and_the_budget_follows_the_deadline() {
        let mut d = CpuDeadline::default();
        d.arm(2);
        assert!(d.on_expiry(100 * MS));
        assert!(!d.on_expiry(200 * MS));
        d.arm(5); // a 20 ms deadline: 20 ms of CPU after the expiry
        assert!(d.on_expiry(300 * MS));
        assert!(d.on_expiry(319 * MS));
        assert!(!d.on_expiry(320 * MS));
    }

    #[test]
    fn the_thread_clock_moves_with_work() {
        let a = thread_cpu_time().expect("the thread CPU clock");
        let deadline = std::time::Instant::now() + Duration::from_millis(20);
        let mut x = 0u64;
        while std::time::Instant::now() < deadline {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time().expect("the thread CPU clock") > a);
    }
}
