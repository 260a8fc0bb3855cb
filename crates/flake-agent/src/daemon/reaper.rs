// SPDX-License-Identifier: MIT
//! Child reaping for an agent that is PID 1.
//!
//! As PID 1 the agent inherits every orphan of the instance and must reap them, yet each
//! call must still learn the exit status of its own app. Waiting per child (`Child::wait`)
//! next to a global `waitpid(-1)` races for the same statuses, so one thread does all the
//! waiting and hands each status to the call that registered the pid. Registration and
//! delivery take the same lock, so a child that exits before it is registered is kept in
//! `early` instead of being lost.

use std::collections::HashMap;
use std::process::Child;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use rustix::process::{wait, Pid, WaitOptions};

use crate::proto::ExitStatus;

#[derive(Debug, Default)]
struct State {
    waiting: HashMap<i32, Sender<ExitStatus>>,
    early: HashMap<i32, ExitStatus>,
    generation: u64,
}

/// The single waiter for all children of the agent.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<State>,
    spawned: Condvar,
}

impl Reaper {
    /// The process's reaper, started on first use. There is one per process because
    /// `waitpid(-1)` in two threads would take each other's statuses.
    pub fn start() -> Arc<Self> {
        static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();
        let reaper = REAPER.get_or_init(|| {
            let reaper = Arc::new(Reaper::default());
            let worker = Arc::clone(&reaper);
            std::thread::spawn(move || worker.run());
            reaper
        });
        Arc::clone(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spawns a child with `spawn` and returns its pid and a receiver for its exit status.
    pub fn spawn(
        &self,
        spawn: impl FnOnce() -> std::io::Result<Child>,
    ) -> std::io::Result<(i32, Receiver<ExitStatus>)> {
        let mut state = self.lock();
        let child = spawn()?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let (tx, rx) = channel();
        match state.early.remove(&pid) {
            Some(status) => {
                let _ = tx.send(status);
            }
            None => {
                state.waiting.insert(pid, tx);
            }
        }
        state.generation += 1;
        self.spawned.notify_all();
        Ok((pid, rx))
    }

    /// Pids of the apps still running.
    pub fn running(&self) -> Vec<i32> {
        self.lock().waiting.keys().copied().collect()
    }

    fn run(&self) {
        loop {
            let seen = self.lock().generation;
            match wait(WaitOptions::empty()) {
                Ok(Some((pid, status))) => self.deliver(pid, status),
                Ok(None) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    // No children at all: sleep until the next spawn.
                    let mut state = self.lock();
                    while state.generation == seen {
                        state = self
                            .spawned
                            .wait(state)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                }
            }
        }
    }

    fn deliver(&self, pid: Pid, status: rustix::process::WaitStatus) {
        let status = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ExitStatus::Exited(u8::try_from(code & 0xff).unwrap_or(255)),
            (None, Some(signal)) => ExitStatus::Signaled(u8::try_from(signal).unwrap_or(9)),
            (None, None) => return,
        };
        let mut state = self.lock();
        match state.waiting.remove(&pid.as_raw_nonzero().get()) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            None => {
                // An orphan, or our child that has not been registered yet.
                state.early.insert(pid.as_raw_nonzero().get(), status);
                if state.early.len() > 4096 {
                    state.early.clear();
                }
            }
        }
    }
}
