//! Automatic canary analysis, rollback and progressive promotion. The verdict is a pure
//! function of the two targets' window statistics; the control loop applies it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::state::{SplitState, WindowStats};
use super::{AnalysisConfig, SplitConfig, PPM};

/// What the analysis concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Fewer canary requests than `min_requests`: nothing is judged.
    NotEnoughData,
    Healthy,
    /// The canary is worse than allowed; the reason says how.
    Breach(String),
}

/// Compares the canary with the baseline.
pub fn judge(cfg: &AnalysisConfig, baseline: &WindowStats, canary: &WindowStats) -> Verdict {
    if canary.requests < cfg.min_requests as u64 {
        return Verdict::NotEnoughData;
    }
    let (c_err, b_err) = (canary.error_rate(), baseline.error_rate());
    if let Some(max) = cfg.max_error_rate {
        if c_err > max {
            return Verdict::Breach(format!(
                "canary 5xx share {:.1}% is above the limit of {:.1}%",
                c_err * 100.0,
                max * 100.0
            ));
        }
    }
    if let Some(inc) = cfg.max_error_rate_increase {
        if c_err > b_err + inc {
            return Verdict::Breach(format!(
                "canary 5xx share {:.1}% is more than {:.1} points above the baseline's {:.1}%",
                c_err * 100.0,
                inc * 100.0,
                b_err * 100.0
            ));
        }
    }
    if let (Some(max), Some(p99)) = (cfg.max_p99, canary.p99) {
        if p99 > max {
            return Verdict::Breach(format!("canary p99 {p99:?} is above the limit of {max:?}"));
        }
    }
    if let (Some(k), Some(cp), Some(bp)) = (cfg.max_p99_ratio, canary.p99, baseline.p99) {
        if baseline.requests >= cfg.min_requests as u64 && cp.as_secs_f64() > k * bp.as_secs_f64() {
            return Verdict::Breach(format!(
                "canary p99 {cp:?} is more than {k} times the baseline's {bp:?}"
            ));
        }
    }
    Verdict::Healthy
}

/// Moves all of the canary's weight to the baseline, in one swap.
pub fn rollback(
    split: &SplitConfig,
    state: &SplitState,
    canary: usize,
    baseline: usize,
    reason: String,
) {
    let mut w = state.weights().as_ref().clone();
    w[baseline] = w[baseline].saturating_add(w[canary]).min(PPM);
    w[canary] = 0;
    state.set_weights(w);
    state.rolled_back.store(true, Ordering::SeqCst);
    state.rollbacks.fetch_add(1, Ordering::Relaxed);
    crate::metrics::canary_rolled_back(&split.name);
    tracing::warn!(split = %split.name, canary = %split.targets[canary].name, reason = %reason, "canary rolled back");
    state.decide(&split.name, "rollback", reason);
}

/// Sets the canary to `ppm` and the baseline to the rest.
pub fn set_canary(state: &SplitState, canary: usize, baseline: usize, ppm: u32) {
    let mut w = state.weights().as_ref().clone();
    let others: u32 = w
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != canary && *i != baseline)
        .map(|(_, x)| *x)
        .sum();
    w[canary] = ppm.min(PPM - others.min(PPM));
    w[baseline] = PPM.saturating_sub(others).saturating_sub(w[canary]);
    state.set_weights(w);
}

/// One evaluation of a split at `now_ms` on this appliance's own counts: analysis, then
/// promotion.
pub fn evaluate(split: &SplitConfig, state: &SplitState, now_ms: u64) {
    evaluate_on(split, state, now_ms, |cfg| {
        (
            state.stats[cfg.baseline].window(now_ms, cfg.window),
            state.stats[cfg.canary].window(now_ms, cfg.window),
            String::new(),
        )
    })
}

/// One evaluation on the windows `windows` gives (baseline, canary, and what they are: a
/// note appended to a decision's reason), asked for only when an analysis is due.
pub fn evaluate_on(
    split: &SplitConfig,
    state: &SplitState,
    now_ms: u64,
    windows: impl FnOnce(&AnalysisConfig) -> (WindowStats, WindowStats, String),
) {
    let Some(cfg) = &split.analysis else {
        return promote_if_due(split, state, now_ms, true);
    };
    let last = state.last_evaluated_ms.load(Ordering::Relaxed);
    if last != 0 && now_ms.saturating_sub(last) < cfg.interval.as_millis() as u64 {
        return;
    }
    state.last_evaluated_ms.store(now_ms, Ordering::Relaxed);
    if state.rolled_back.load(Ordering::SeqCst) || state.weights()[cfg.canary] == 0 {
        return;
    }
    let (baseline, canary, note) = windows(cfg);
    let verdict = judge(cfg, &baseline, &canary);
    *state.last_verdict.lock().unwrap_or_else(|p| p.into_inner()) = match verdict {
        Verdict::NotEnoughData => "not_enough_data",
        Verdict::Healthy => "healthy",
        Verdict::Breach(_) => "breach",
    };
    match verdict {
        Verdict::Breach(reason) => rollback(split, state, cfg.canary, cfg.baseline, reason + &note),
        Verdict::Healthy => promote_if_due(split, state, now_ms, true),
        Verdict::NotEnoughData => {}
    }
}

fn promote_if_due(split: &SplitConfig, state: &SplitState, now_ms: u64, healthy: bool) {
    let Some(p) = &split.promotion else { return };
    let Some(a) = &split.analysis else { return };
    if !healthy || state.paused.load(Ordering::SeqCst) || state.rolled_back.load(Ordering::SeqCst) {
        return;
    }
    let step = state.step.load(Ordering::SeqCst) as usize;
    if step + 1 >= p.steps.len() {
        return;
    }
    let held =
        Duration::from_millis(now_ms.saturating_sub(state.step_started_ms.load(Ordering::SeqCst)));
    if held < p.hold {
        return;
    }
    promote(
        split,
        state,
        a.canary,
        a.baseline,
        step + 1,
        now_ms,
        "analysis healthy for the hold time",
    );
}

/// Moves to promotion step `to` (its canary weight).
pub fn promote(
    split: &SplitConfig,
    state: &SplitState,
    canary: usize,
    baseline: usize,
    to: usize,
    now_ms: u64,
    why: &str,
) {
    let Some(p) = &split.promotion else { return };
    let Some(&ppm) = p.steps.get(to) else { return };
    set_canary(state, canary, baseline, ppm);
    state.step.store(to as u32, Ordering::SeqCst);
    state.step_started_ms.store(now_ms, Ordering::SeqCst);
    crate::metrics::canary_promoted(&split.name);
    state.decide(
        &split.name,
        "promote",
        format!("step {} ({:.3}%): {why}", to, ppm as f64 / 10_000.0),
    );
}
