//! Coarse timeouts for the request path: a deadline per operation, fired by one sweep per
//! worker thread every [`TICK`].
//!
//! Every read and write of a proxied request carries a timeout. monoio's own `Timeout` embeds
//! a 640-byte timer entry aligned to 128 bytes, and the request future nests several, so it
//! grew to kilobytes that are allocated and moved for every request. Here a timeout is the
//! inner future plus 24 bytes: a deadline in milliseconds and a slot in this thread's table,
//! taken only if the operation has to wait at all and given back when it ends. A sweep task,
//! started when the first slot is taken and ending when none is left, wakes the operations
//! whose deadline has passed; a timeout fires at most one [`TICK`] late.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// How often deadlines are checked: the most a timeout fires late.
pub const TICK: Duration = Duration::from_millis(10);

/// A timeout ran out before the operation finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

struct Slot {
    deadline: u64,
    waker: Waker,
    fired: bool,
}

#[derive(Default)]
struct Table {
    slots: slab::Slab<Slot>,
    /// No slot's deadline is earlier than this: sweeps before it have nothing to do.
    earliest: u64,
    /// When a sweep last ran (`clock::now_ms`); 0 when no sweep task is running. While one
    /// runs, this is the time to within a tick, and deadlines are counted from it without
    /// reading the clock.
    swept: u64,
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::new(Table::default());
}

/// Runs `fut` for at least `d` and at most `d` plus two [`TICK`]s.
pub fn timeout<F: Future>(d: Duration, fut: F) -> Timeout<F> {
    Timeout {
        fut,
        deadline: deadline_after(d),
        slot: Registration(None),
    }
}

/// Milliseconds of `clock::now_ms`, without reading the clock while a sweep runs: then it is
/// the time of the last tick, at most a tick behind (and so never ahead).
pub fn now_ms() -> u64 {
    let swept = TABLE.with(|t| t.borrow().swept);
    if swept != 0 {
        swept
    } else {
        crate::clock::now_ms()
    }
}

/// How long until `deadline` (milliseconds of [`now_ms`]); a timeout of this length ends
/// at or after the deadline.
pub fn until(deadline: u64) -> Duration {
    Duration::from_millis(deadline.saturating_sub(now_ms()))
}

/// The deadline `d` from now, never early. While a sweep runs, "now" is the time of its last
/// tick (at most a tick behind, so a tick is added) and no clock is read.
pub fn deadline_after(d: Duration) -> u64 {
    let ms = d.as_millis().min(u64::MAX as u128 / 2) as u64;
    let swept = TABLE.with(|t| t.borrow().swept);
    if swept != 0 {
        swept + TICK.as_millis() as u64 + ms
    } else {
        crate::clock::now_ms() + ms
    }
}

/// Waits `d` (plus up to one [`TICK`]).
pub async fn sleep(d: Duration) {
    let _ = timeout(d, std::future::pending::<()>()).await;
}

pin_project_lite::pin_project! {
    /// The future of [`timeout`].
    pub struct Timeout<F> {
        #[pin]
        fut: F,
        deadline: u64,
        slot: Registration,
    }
}

/// A slot in this thread's table, given back on drop.
struct Registration(Option<usize>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(k) = self.0.take() {
            let _ = TABLE.try_with(|t| {
                t.borrow_mut().slots.try_remove(k);
            });
        }
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let deadline = *this.deadline;
        let slot = &mut this.slot.0;
        let fired = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            let Some(k) = *slot else {
                let k = t.slots.insert(Slot {
                    deadline,
                    waker: cx.waker().clone(),
                    fired: false,
                });
                *slot = Some(k);
                t.earliest = if t.slots.len() == 1 {
                    deadline
                } else {
                    t.earliest.min(deadline)
                };
                ensure_sweeper(&mut t);
                return false;
            };
            match t.slots.get_mut(k) {
                Some(s) if !s.fired => {
                    if !s.waker.will_wake(cx.waker()) {
                        s.waker = cx.waker().clone();
                    }
                    false
                }
                _ => {
                    t.slots.try_remove(k);
                    *slot = None;
                    true
                }
            }
        });
        if fired {
            Poll::Ready(Err(Elapsed))
        } else {
            Poll::Pending
        }
    }
}

/// Starts the sweep task unless one is running. The table is per thread, and lb runs one
/// runtime per worker thread for the thread's life. A sweep task that is dropped marks
/// itself gone ([`SweepGuard`]); monoio does not always drop pending tasks with their
/// runtime, so a second runtime on the same thread would find the mark still set and its
/// timeouts would not fire: not a use lb has.
fn ensure_sweeper(t: &mut Table) {
    if t.swept != 0 {
        return;
    }
    t.swept = crate::clock::now_ms();
    monoio::spawn(sweep());
}

/// Marks the sweep as gone when its task ends or is dropped.
struct SweepGuard;

impl Drop for SweepGuard {
    fn drop(&mut self) {
        let _ = TABLE.try_with(|t| t.borrow_mut().swept = 0);
    }
}

async fn sweep() {
    let _guard = SweepGuard;
    loop {
        monoio::time::sleep(TICK).await;
        let now = crate::clock::now_ms();
        let done = TABLE.with(|t| {
            let mut t = t.borrow_mut();
            t.swept = now;
            if t.slots.is_empty() {
                return true;
            }
            if now >= t.earliest {
                let mut earliest = u64::MAX;
                for (_, s) in t.slots.iter_mut() {
                    if s.fired {
                        continue;
                    }
                    if s.deadline <= now {
                        s.fired = true;
                        s.waker.wake_by_ref();
                    } else {
                        earliest = earliest.min(s.deadline);
                    }
                }
                t.earliest = earliest;
            }
            false
        });
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn a_ready_future_wins_and_a_stuck_one_times_out_on_time() {
        rt().block_on(async {
            assert_eq!(timeout(Duration::from_millis(0), async { 7 }).await, Ok(7));
            let t0 = Instant::now();
            let r = timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
            let took = t0.elapsed();
            assert_eq!(r, Err(Elapsed));
            assert!(took >= Duration::from_millis(49), "fired early: {took:?}");
            assert!(
                took < Duration::from_secs(2),
                "fired far too late: {took:?}"
            );
            // An operation that finishes first gives its slot back.
            let r = timeout(
                Duration::from_secs(5),
                monoio::time::sleep(Duration::from_millis(5)),
            )
            .await;
            assert_eq!(r, Ok(()));
            TABLE.with(|t| assert!(t.borrow().slots.is_empty(), "a slot leaked"));
        });
    }

    #[test]
    fn many_timeouts_fire_in_deadline_order_and_the_sweep_restarts() {
        rt().block_on(async {
            for _ in 0..2 {
                // Each round starts after the sweep saw the table empty and ended.
                monoio::time::sleep(TICK * 3).await;
                TABLE.with(|t| assert_eq!(t.borrow().swept, 0, "the sweep did not end"));
                let order = std::rc::Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for (i, ms) in [60u64, 20, 40].into_iter().enumerate() {
                    let order = order.clone();
                    tasks.push(monoio::spawn(async move {
                        sleep(Duration::from_millis(ms)).await;
                        order.borrow_mut().push(i);
                    }));
                }
                for t in tasks {
                    t.await;
                }
                assert_eq!(*order.borrow(), vec![1, 2, 0]);
                TABLE.with(|t| assert!(t.borrow().slots.is_empty()));
            }
        });
    }
}
