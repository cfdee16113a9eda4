//! Threads started once, before the agent says HELLO, and reused by every
//! session: the connection's reader, the command's input writer and its
//! output pumps. A sandbox restored from a template finds them already
//! there, so it does not pay for creating them. On nested hosts, where the
//! guest kernel's ring 0 is emulated, a thread's start and end (clone3, a
//! stack and a signal stack mapped, guarded and unmapped again) cost
//! milliseconds each.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread;

/// How many threads a session keeps busy at once.
pub const SESSION_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    jobs: Sender<Job>,
    queue: Mutex<Receiver<Job>>,
    /// Workers waiting for a job.
    idle: Mutex<usize>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = mpsc::channel();
        Pool {
            jobs,
            queue: Mutex::new(queue),
            idle: Mutex::new(0),
        }
    })
}

fn idle() -> std::sync::MutexGuard<'static, usize> {
    pool().idle.lock().expect("worker count")
}

/// Starts `n` more idle workers.
pub fn start(n: usize) {
    for _ in 0..n {
        add_worker(None);
    }
}

/// Runs `job` on an idle worker, or on a new one when none is idle (a job
/// may run as long as the session: none ever waits for another).
pub fn spawn(job: impl FnOnce() + Send + 'static) {
    {
        let mut idle = idle();
        if *idle > 0 {
            *idle -= 1;
            pool()
                .jobs
                .send(Box::new(job))
                .expect("the workers' queue lives as long as the process");
            return;
        }
    }
    add_worker(Some(Box::new(job)));
}

/// A worker: runs `first` if given, then each job queued for it.
fn add_worker(first: Option<Job>) {
    if first.is_none() {
        *idle() += 1;
    }
    thread::spawn(move || {
        let mut next = first;
        loop {
            if let Some(job) = next.take() {
                job();
                *idle() += 1;
            }
            match pool().queue.lock().expect("job queue").recv() {
                Ok(job) => next = Some(job),
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn jobs_run_at_once_even_when_every_worker_is_busy() {
        start(1);
        // More blocking jobs than workers: each must start without waiting
        // for another to end.
        let (started_tx, started) = channel();
        let (release_tx, release) = channel::<()>();
        let release = Arc::new(Mutex::new(release));
        for i in 0..6 {
            let (started_tx, release) = (started_tx.clone(), release.clone());
            spawn(move || {
                started_tx.send(i).unwrap();
                let _ = release.lock().unwrap().recv_timeout(Duration::from_secs(5));
            });
        }
        let mut seen: Vec<i32> = (0..6)
            .map(|_| started.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        drop(release_tx);
        // Workers go back to idle and take the next jobs.
        let (done_tx, done) = channel();
        for _ in 0..3 {
            let done_tx = done_tx.clone();
            spawn(move || done_tx.send(thread::current().id()).unwrap());
        }
        for _ in 0..3 {
            done.recv_timeout(Duration::from_secs(5)).unwrap();
        }
    }
}
