//! Planning a request without its side effects, for an explanation asked through the admin
//! API on the live snapshot: rate limits look without taking tokens, splits count no
//! decision, and no mirror copy is taken (it would hold a place in the mirror's in-flight
//! count that no send ever gives back).

use std::cell::Cell;

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's planning free of side effects.
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ACTIVE.set(false);
        }
    }
    ACTIVE.set(true);
    let _reset = Reset;
    f()
}

/// Whether this thread plans under [`run`].
pub fn active() -> bool {
    ACTIVE.get()
}
