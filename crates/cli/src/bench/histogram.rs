//! A log-linear latency histogram in the style of HdrHistogram: values
//! (nanoseconds) fall into power-of-two ranges, each split into
//! `SUB_BUCKETS` equal slots, so every recorded value is known to within
//! 1/`SUB_BUCKETS` (1.6 %) of itself at a fixed, small memory cost.

/// Linear slots per power of two (a power of two itself).
const SUB_BUCKETS: u64 = 64;
/// log2 of `SUB_BUCKETS`.
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Powers of two covered above the linear range: values up to 2^(SUB_BITS +
/// RANGES) ns (about 18 minutes) are told apart; larger ones are clamped.
const RANGES: u32 = 35;

/// Counts of recorded values by slot.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Slot `i` covers the values whose `slot_of` is `i`.
    counts: Vec<u64>,
    /// Sum of `counts`.
    total: u64,
    /// Sum of the recorded values (for the mean).
    sum: u128,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; LAST_SLOT + 1],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

/// The slot of `v`: values below `SUB_BUCKETS` have one each; a larger
/// value's power of two picks the range and the `SUB_BITS` bits below its
/// leading one pick the slot within it. Values beyond the last range share
/// the last slot.
fn slot_of(v: u64) -> usize {
    if v < SUB_BUCKETS {
        return v as usize;
    }
    let log = 63 - v.leading_zeros(); // >= SUB_BITS
    let range = log - SUB_BITS + 1;
    if range > RANGES {
        return LAST_SLOT;
    }
    let sub = (v >> (log - SUB_BITS)) & (SUB_BUCKETS - 1);
    (range as usize) * SUB_BUCKETS as usize + sub as usize
}

/// Index of the last slot (also where clamped values go).
const LAST_SLOT: usize = ((RANGES + 1) as usize) * SUB_BUCKETS as usize - 1;

/// The highest value that falls into `slot` (reported for percentiles, so
/// a percentile never understates).
fn slot_high(slot: usize) -> u64 {
    let range = (slot as u64) / SUB_BUCKETS;
    let sub = (slot as u64) % SUB_BUCKETS;
    if range == 0 {
        return sub;
    }
    let log = range + SUB_BITS as u64 - 1;
    let low = (1u64 << log) + (sub << (log - SUB_BITS as u64));
    low + (1u64 << (log - SUB_BITS as u64)) - 1
}

impl Histogram {
    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[slot_of(v)] += 1;
        self.total += 1;
        self.sum += v as u128;
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the recorded values (exact; 0 when empty).
    pub fn mean(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            (self.sum / self.total as u128) as u64
        }
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest slot bound below
    /// or at which at least `q` of the values lie, never above the maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (slot, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                if slot == LAST_SLOT {
                    return self.max;
                }
                return slot_high(slot).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_ordered_and_bound_their_values() {
        let mut values: Vec<u64> = (0..100_000u64)
            .chain((17..41).map(|s| (1u64 << s) + 12345))
            .chain((17..41).map(|s| (1u64 << s) - 1))
            .collect();
        values.sort_unstable();
        let mut last = 0;
        for v in values {
            let s = slot_of(v);
            assert!(s >= last, "slot order at {v}");
            last = s;
            let high = slot_high(s);
            assert!(high >= v, "slot {s} high {high} below {v}");
            // Within 1/64 of the value.
            assert!(high - v <= v / SUB_BUCKETS + 1, "slot {s} too wide for {v}");
        }
    }

    #[test]
    fn quantiles_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 / 5_000_000.0 - 1.0).abs() < 0.02, "p50 {p50}");
        assert!((p99 / 9_900_000.0 - 1.0).abs() < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(1.0), 10_000_000);
        assert_eq!(h.max(), 10_000_000);
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.mean(), 5_000_500);
    }

    #[test]
    fn huge_values_are_clamped() {
        let mut a = Histogram::default();
        a.record(10);
        a.record(u64::MAX);
        assert_eq!(a.count(), 2);
        assert_eq!(a.quantile(0.5), 10);
        assert_eq!(a.quantile(1.0), u64::MAX);
        assert_eq!(Histogram::default().quantile(0.5), 0);
    }
}
