//! A run's peak resident memory: Linux keeps the process's high-water mark (`VmHWM` in
//! `/proc/self/status`), and writing `5` to `/proc/self/clear_refs` resets it to the current
//! resident size, so a run's peak is measured from the start of its training. Elsewhere (or
//! where /proc refuses) nothing is measured, and the history says nothing rather than a guess.

/// Resets the high-water mark to the current resident size (best effort).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The resident high-water mark since the last [`reset_peak`], in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_hwm_kib(&status).map(|kib| kib as f64 / 1024.0)
}

/// `VmHWM:  123456 kB` → 123456.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line.split_whitespace().skip(1);
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark_and_grows_with_an_allocation() {
        assert_eq!(vm_hwm_kib("Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t 1 kB\n"), Some(2048));
        assert_eq!(vm_hwm_kib("VmHWM: 12 MB\n"), None);
        if cfg!(target_os = "linux") {
            reset_peak();
            let before = peak_rss_mib().expect("Linux reports VmHWM");
            let block = vec![1u8; 64 << 20];
            std::hint::black_box(&block);
            let after = peak_rss_mib().unwrap();
            assert!(after >= before + 60.0, "{before} MiB -> {after} MiB after touching 64 MiB");
        }
    }
}
