//! Planning a request without its side effects, for an explanation asked through the admin
//! API on the live snapshot: rate limits look without taking tokens, splits count no
//! decision, no mirror copy is taken (it would hold a place in the mirror's in-flight count
//! that no send ever gives back), JWT checks count nothing, cache nothing and ask for no JWKS
//! refetch, and geo lookups count nothing.

use std::cell::Cell;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's planning free of side effects.
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    /// Puts the flag back as it was, also if `f` unwinds.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.set(self.0);
        }
    }
    let _restore = Restore(ACTIVE.replace(true));
    f()
}

/// Whether this thread plans under [`run`].
pub fn active() -> bool {
    ACTIVE.get()
}
