//! The one percentile definition of the workspace, shared by the evidence figures and the
//! benchmarks so that a "p99" means the same thing in a SOC 2 report and in BENCHMARKS.md.

/// The `q`-th percentile (0..=100) of `sorted` (ascending) by the nearest-rank method: the
/// smallest value such that at least q % of the values are at or below it. `None` when
/// `sorted` is empty.
pub fn nearest_rank<T: Copy>(sorted: &[T], q: u32) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let q = u64::from(q.min(100));
    let n = sorted.len() as u64;
    // rank = ceil(q/100 * n), at least 1.
    let rank = (q * n).div_ceil(100).max(1);
    Some(
        sorted[usize::try_from(rank - 1)
            .unwrap_or(usize::MAX)
            .min(sorted.len() - 1)],
    )
}

#[cfg(test)]
mod tests {
    use super::nearest_rank;

    #[test]
    fn nearest_rank_on_the_textbook_example() {
        // The standard worked example: 15, 20, 35, 40, 50.
        let v = [15, 20, 35, 40, 50];
        assert_eq!(nearest_rank(&v, 5), Some(15));
        assert_eq!(nearest_rank(&v, 30), Some(20));
        assert_eq!(nearest_rank(&v, 40), Some(20));
        assert_eq!(nearest_rank(&v, 50), Some(35));
        assert_eq!(nearest_rank(&v, 100), Some(50));
        assert_eq!(nearest_rank(&v, 0), Some(15));
        assert_eq!(nearest_rank::<i64>(&[], 50), None);
        assert_eq!(nearest_rank(&[7.5f64], 99), Some(7.5));
    }
}
