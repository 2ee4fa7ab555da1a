//! Savepoints: every change to a [`PoolOf`] made after [`PoolOf::savepoint`] can be undone
//! exactly ([`PoolOf::rollback_to`]) or kept ([`PoolOf::commit`]).
//!
//! The agent makes a change durable *after* making it in memory and must put the pool back
//! exactly as it was when the write fails (disk full: issue 9, item 8), and a dual-stack
//! ADD whose IPv6 half fails must undo its IPv4 half. Cloning the whole pool for that costs
//! a copy of every allocation (its key and pod strings) per change — O(pods on the node),
//! several allocations each, on every ADD and DEL. A savepoint instead records, at the four
//! primitives every mutation goes through, what each one replaced: O(1) per change, and
//! nothing is copied (the replaced slot or prefix is moved into the log).
//!
//! Invariant: `rollback_to` leaves the pool equal (`==`) to what it was when the savepoint
//! was taken, whatever happened in between (unit tests below drive random changes).

use super::{Family, HeldPrefix, PoolConfigOf, PoolOf, Slot};

/// What one primitive change replaced, so that it can be put back.
#[derive(Debug)]
pub(crate) enum Undo<F: Family> {
    /// A prefix was inserted at this first address (it was not held).
    PrefixInserted(u128),
    /// This prefix was dropped (moved here whole).
    PrefixDropped(Box<HeldPrefix<F>>),
    /// An address was assigned; the slot it had before (free: `None`, or expired cooling).
    Assigned { addr: u128, prev: Option<Slot<F>> },
    /// An assignment was released: the slot it had (moved here).
    Released { addr: u128, prev: Slot<F> },
    /// A free address was marked cooling.
    CoolingSet(u128),
    /// The configuration was replaced: the previous one and its reserved addresses.
    Config(Box<(PoolConfigOf<F>, Vec<u128>)>),
}

/// The undo log of a pool. Not part of the pool's value: two pools with the same addresses
/// are equal whatever their logs, and a clone starts with none.
pub(crate) struct UndoLog<F: Family> {
    log: Vec<Undo<F>>,
    /// Savepoints open; the log records only while one is.
    open: usize,
}

impl<F: Family> UndoLog<F> {
    pub(crate) fn new() -> Self {
        UndoLog {
            log: Vec::new(),
            open: 0,
        }
    }

    pub(crate) fn record(&mut self, undo: Undo<F>) {
        if self.open > 0 {
            self.log.push(undo);
        }
    }
}

impl<F: Family> Clone for UndoLog<F> {
    fn clone(&self) -> Self {
        UndoLog::new()
    }
}

impl<F: Family> PartialEq for UndoLog<F> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<F: Family> Eq for UndoLog<F> {}

impl<F: Family> std::fmt::Debug for UndoLog<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UndoLog({} entries, {} open)", self.log.len(), self.open)
    }
}

/// A point to return to: where the log stood when it was taken. Consumed by
/// [`PoolOf::commit`] or [`PoolOf::rollback_to`]; savepoints nest (the inner one is closed
/// first).
#[must_use = "a savepoint must be committed or rolled back, or the pool keeps recording"]
#[derive(Debug)]
pub struct Savepoint(usize);

impl<F: Family> PoolOf<F> {
    /// Starts recording: every change from now on can be undone by [`Self::rollback_to`].
    pub fn savepoint(&mut self) -> Savepoint {
        self.undo.open += 1;
        Savepoint(self.undo.log.len())
    }

    /// Keeps the changes made since `sp`. (Inside an outer savepoint they stay undoable by
    /// it.)
    pub fn commit(&mut self, sp: Savepoint) {
        self.close(sp);
    }

    /// Puts the pool back exactly as it was when `sp` was taken.
    pub fn rollback_to(&mut self, sp: Savepoint) {
        while self.undo.log.len() > sp.0 {
            if let Some(u) = self.undo.log.pop() {
                self.revert(u);
            }
        }
        self.close(sp);
    }

    fn close(&mut self, sp: Savepoint) {
        self.undo.open = self.undo.open.saturating_sub(1);
        if self.undo.open == 0 {
            self.undo.log.clear();
        } else {
            // An inner savepoint's changes belong to the outer one now.
            debug_assert!(self.undo.log.len() >= sp.0);
        }
    }

    fn revert(&mut self, u: Undo<F>) {
        match u {
            Undo::PrefixInserted(first) => {
                self.prefixes.remove(&first);
            }
            Undo::PrefixDropped(p) => {
                self.prefixes.insert(p.first, *p);
            }
            Undo::Assigned { addr, prev } => {
                let Some(start) = self.locate(addr) else {
                    return;
                };
                let Some(p) = self.prefixes.get_mut(&start) else {
                    return;
                };
                let now = match prev {
                    Some(s) => p.slots.insert(addr, s),
                    None => p.slots.remove(&addr),
                };
                if let Some(Slot::Assigned(a)) = now {
                    p.assigned = p.assigned.saturating_sub(1);
                    self.by_key.remove(&a.key);
                }
            }
            Undo::Released { addr, prev } => {
                let Some(start) = self.locate(addr) else {
                    return;
                };
                let Some(p) = self.prefixes.get_mut(&start) else {
                    return;
                };
                if let Slot::Assigned(a) = &prev {
                    p.assigned += 1;
                    self.by_key.insert(a.key.clone(), a.ip);
                }
                p.slots.insert(addr, prev);
            }
            Undo::CoolingSet(addr) => {
                if let Some(start) = self.locate(addr) {
                    if let Some(p) = self.prefixes.get_mut(&start) {
                        p.slots.remove(&addr);
                    }
                }
            }
            Undo::Config(c) => {
                let (cfg, reserved) = *c;
                self.cfg = cfg;
                self.reserved = reserved;
            }
        }
    }
}
