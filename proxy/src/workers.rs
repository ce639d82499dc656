//! Worker threads: one single-threaded tokio runtime per thread, clients dealt round robin.
//!
//! A client session lives on one worker for its whole life, and the server connections a worker
//! opens are registered with that worker's reactor and returned to its own idle list. So the
//! per-query path has no work stealing and no cross-thread wake-ups (measured: about 10 % less
//! CPU per transaction than tokio's multi-threaded scheduler on this kind of machine; see the
//! benchmark in README.md). The accept loop runs on worker 0 (see [`crate::listener`]); the
//! shutdown sequence and the clock run on the main thread's runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the current thread (0 outside workers).
pub fn current() -> usize {
    WORKER.with(|w| w.get())
}

/// The running worker threads.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

impl Workers {
    /// Starts `n` worker threads.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            threads: Vec::with_capacity(n),
            next: AtomicUsize::new(0),
        };
        for id in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            workers.stops.push(stop_tx);
            let thread = std::thread::Builder::new()
                .name(format!("switchyard-worker-{id}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(id));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// The index of the next worker in round-robin order.
    pub fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// A worker by index.
    pub fn get(&self, i: usize) -> &Handle {
        &self.handles[i % self.handles.len()]
    }

    /// Stops every worker (tasks still running are dropped) and waits for the threads.
    pub fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}
