//! Fault injection for tests: make the next job of one endpoint fail in a chosen way after
//! it has decided (all its writes and state changes made), to prove that nothing of a
//! failed job remains. Armed only through [`Faults::arm`] on a running [`crate::Server`]'s
//! `app` (there is no HTTP route, config key or environment variable for it), so a
//! deployed service never fires one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::store::{StoreError, Txn};

/// How the job fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The job returns an error.
    Error,
    /// The job panics.
    Panic,
    /// The job succeeds, and the flush of its group fails (nothing of the group is written).
    FailFlush,
    /// The job succeeds, and its group waits this long between being applied to sled and
    /// being flushed (the window a read beside the writer must not see into).
    SlowFlush(std::time::Duration),
    /// Like `SlowFlush`, then the flush fails: the group was in sled's memory, never
    /// durable, and the store stops (fail-stop; what reached the disk is unknown).
    SlowFailedFlush(std::time::Duration),
}

/// Faults armed per endpoint label (`voucher.check`, `loyalty.award`, …), each fired once.
#[derive(Debug, Default)]
pub struct Faults {
    any: AtomicBool,
    armed: Mutex<Vec<(String, Fault)>>,
}

impl Faults {
    /// Fail the next job of `endpoint` with `fault`.
    pub fn arm(&self, endpoint: &str, fault: Fault) {
        let mut a = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        a.push((endpoint.to_owned(), fault));
        self.any.store(true, Ordering::Relaxed);
    }

    /// Called by a job of `endpoint` once it has decided: fire the fault armed for it.
    pub(crate) fn hit(&self, endpoint: &str, txn: &mut Txn<'_>) -> Result<(), StoreError> {
        if !self.any.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fault = {
            let mut a = self.armed.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = a.iter().position(|(e, _)| e == endpoint) else {
                return Ok(());
            };
            let (_, f) = a.remove(i);
            self.any.store(!a.is_empty(), Ordering::Relaxed);
            f
        };
        match fault {
            Fault::Error => Err(StoreError::Io(format!(
                "injected fault after {endpoint} decided (test)"
            ))),
            Fault::Panic => panic!("injected panic after {endpoint} decided (test)"),
            Fault::FailFlush => {
                txn.inject_flush_failure();
                Ok(())
            }
            Fault::SlowFlush(d) => {
                txn.inject_flush_delay(d);
                Ok(())
            }
            Fault::SlowFailedFlush(d) => {
                txn.inject_flush_delay(d);
                txn.inject_flush_failure();
                Ok(())
            }
        }
    }
}
