//! How far another machine's clock is from this one, from one round trip.
//!
//! Pure arithmetic: the caller reads both clocks (this machine's before
//! sending and after receiving, the store's in its answer) and passes the
//! readings in.

use chrono::TimeDelta;

use crate::model::Timestamp;

/// A store's clock against this machine's, as one round trip measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSkew {
    /// The store's clock minus this machine's (positive: the store is
    /// ahead).
    pub offset: TimeDelta,
    /// How far `offset` may be off: half the round trip (the store read
    /// its clock somewhere inside it) plus half the resolution of the
    /// store's reading.
    pub uncertainty: TimeDelta,
}

impl ClockSkew {
    /// From `server`, the store's clock truncated to `resolution` (1 s for
    /// an HTTP `Date` header, zero for an exact reading), read while this
    /// machine's clock went from `sent` to `received`. The estimate takes
    /// the middle of both intervals.
    ///
    /// ```
    /// use chrono::{TimeDelta, TimeZone, Utc};
    /// use contact_sync_core::clock::ClockSkew;
    /// let at = |ms| Utc.timestamp_millis_opt(ms).unwrap();
    /// // A Date header of 10 s (server time 10.0..11.0 s) during 12.0..12.2 s here.
    /// let s = ClockSkew::measure(at(10_000), TimeDelta::seconds(1), at(12_000), at(12_200));
    /// assert_eq!(s.offset, TimeDelta::milliseconds(-1_600));
    /// assert_eq!(s.uncertainty, TimeDelta::milliseconds(600));
    /// ```
    pub fn measure(
        server: Timestamp,
        resolution: TimeDelta,
        sent: Timestamp,
        received: Timestamp,
    ) -> ClockSkew {
        let rtt = (received - sent).max(TimeDelta::zero());
        let middle = sent + rtt / 2;
        ClockSkew {
            offset: server + resolution / 2 - middle,
            uncertainty: rtt / 2 + resolution / 2,
        }
    }

    /// The offset in seconds.
    pub fn secs(&self) -> f64 {
        secs(self.offset)
    }

    /// The uncertainty in seconds.
    pub fn uncertainty_secs(&self) -> f64 {
        secs(self.uncertainty)
    }

    /// The part of the offset the measurement is sure of: its size minus
    /// the uncertainty, at least 0 (0: the clocks agree as far as this
    /// round trip can tell).
    pub fn certain_secs(&self) -> f64 {
        (self.secs().abs() - self.uncertainty_secs()).max(0.0)
    }
}

fn secs(d: TimeDelta) -> f64 {
    d.num_microseconds()
        .map_or(d.num_milliseconds() as f64 / 1e3, |us| us as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn at(ms: i64) -> Timestamp {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn an_exact_reading_is_compared_with_the_middle_of_the_round_trip() {
        let s = ClockSkew::measure(at(5_150), TimeDelta::zero(), at(5_000), at(5_200));
        assert_eq!(s.offset, TimeDelta::milliseconds(50));
        assert_eq!(s.uncertainty, TimeDelta::milliseconds(100));
        assert_eq!(s.secs(), 0.05);
        assert_eq!(s.certain_secs(), 0.0);
    }

    #[test]
    fn a_whole_second_reading_of_synchronized_clocks_is_within_its_uncertainty() {
        // Server and local clocks agree; the Date header truncates 7.3 s to 7 s.
        let s = ClockSkew::measure(at(7_000), TimeDelta::seconds(1), at(7_290), at(7_310));
        assert!(s.secs().abs() <= s.uncertainty_secs(), "{s:?}");
        assert_eq!(s.certain_secs(), 0.0);
    }

    #[test]
    fn a_large_offset_is_certain_beyond_its_uncertainty() {
        // The server is an hour behind.
        let s = ClockSkew::measure(at(0), TimeDelta::seconds(1), at(3_600_000), at(3_600_040));
        assert!((s.secs() + 3599.52).abs() < 1e-9, "{s:?}");
        assert!((s.certain_secs() - 3599.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn a_clock_going_backwards_during_the_trip_counts_as_no_time() {
        let s = ClockSkew::measure(at(1_000), TimeDelta::zero(), at(1_000), at(900));
        assert_eq!(s.uncertainty, TimeDelta::zero());
        assert_eq!(s.offset, TimeDelta::zero());
    }
}
