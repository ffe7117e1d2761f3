//! Thread tuning for training on the CPU.
//!
//! The CPU kernels (`kd-kernels`) split their work over rayon's pool, one task per core.
//! candle runs its own element-wise ops (the gradient sums of backprop, optimizer updates) on a
//! separate barrier pool whose workers spin 25,000 times after each op before parking, and
//! while they spin they take a core from the next kernel's rayon workers. Measured with
//! `perf record` on `kd bench --archs resnet20` (2 cores): the `candle-bp-0` worker's spin
//! loop was 4.3% of all CPU samples; with a spin limit of 1,000 it is 0.2%. Parking sooner
//! costs one futex wake per element-wise op, microseconds against ops of a millisecond.

/// The environment variable candle reads for its barrier pool's spin limit.
pub const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// The spin limit the `kd` binary uses unless the user sets [`SPIN_LIMIT_VAR`].
pub const DEFAULT_SPIN_LIMIT: &str = "1000";

/// The value to set, given the variable's current value: none if the user chose one.
pub fn spin_limit_to_set(current: Option<&str>) -> Option<&'static str> {
    match current {
        Some(v) if !v.is_empty() => None,
        _ => Some(DEFAULT_SPIN_LIMIT),
    }
}

/// Sets candle's barrier-pool spin limit to [`DEFAULT_SPIN_LIMIT`] unless the user set one.
/// Call at the start of `main`, before any thread exists and before candle's first op (candle
/// reads the variable once, when it starts its pool).
pub fn limit_candle_spinning() {
    let current = std::env::var(SPIN_LIMIT_VAR).ok();
    if let Some(v) = spin_limit_to_set(current.as_deref()) {
        std::env::set_var(SPIN_LIMIT_VAR, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_choice_is_kept_and_an_unset_variable_gets_the_default() {
        assert_eq!(spin_limit_to_set(None), Some("1000"));
        assert_eq!(spin_limit_to_set(Some("")), Some("1000"));
        assert_eq!(spin_limit_to_set(Some("25000")), None);
        assert_eq!(spin_limit_to_set(Some("0")), None);
    }
}
