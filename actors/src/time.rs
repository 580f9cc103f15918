//! UTC timestamps as operators read them (RFC 3339), and the shared timer
//! grid of periodic work.
//!
//! The grid: periodic work per node (telemetry samples, liveness checks,
//! distribution ticks, the instances' slow health ticks) is due at whole
//! multiples of its period since one process-wide origin, not `period`
//! after whatever happened last. Timers with the same period then expire in
//! the same millisecond, and 200 nodes cost one wake-up of the runtime per
//! period instead of 200 spread over it.

use std::sync::OnceLock;
use std::time::Duration;

use time::OffsetDateTime;

/// The grid's origin: the first time anyone asked.
fn origin() -> tokio::time::Instant {
    static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();
    *ORIGIN.get_or_init(tokio::time::Instant::now)
}

/// The first point of the `period` grid strictly after `now` (`now` itself
/// for a zero period).
pub fn grid_after(now: tokio::time::Instant, period: Duration) -> tokio::time::Instant {
    let period_ns = period.as_nanos();
    if period_ns == 0 {
        return now;
    }
    let origin = origin();
    let since = now.saturating_duration_since(origin).as_nanos();
    let next = (since / period_ns + 1) * period_ns;
    u64::try_from(next)
        .ok()
        .and_then(|ns| origin.checked_add(Duration::from_nanos(ns)))
        .filter(|&at| at > now)
        .unwrap_or(now + period)
}

/// The next point of the `period` grid at least half a period from now
/// (so a timer that fired a little early does not fire twice).
pub fn next_on_grid(period: Duration) -> tokio::time::Instant {
    grid_after(tokio::time::Instant::now() + period / 2, period)
}

/// How long until [`next_on_grid`].
pub fn until_next_on_grid(period: Duration) -> Duration {
    next_on_grid(period).saturating_duration_since(tokio::time::Instant::now())
}

/// Now, UTC, RFC 3339 with exactly three fractional digits
/// (`2026-11-28T02:15:42.000Z`). Fixed width, so string order is time
/// order: the `time` crate's own RFC 3339 formatter drops trailing zeros
/// (`…:42Z` vs `…:42.149Z`), which made a later sample sort before an
/// earlier one.
pub fn utc_now_millis() -> String {
    format_millis(OffsetDateTime::now_utc())
}

fn format_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn fixed_width_and_sorted_like_time() {
        let whole = OffsetDateTime::from_unix_timestamp(1_795_831_542).unwrap();
        let later = whole + time::Duration::milliseconds(149);
        let (a, b) = (format_millis(whole), format_millis(later));
        assert_eq!(a, "2026-11-28T02:05:42.000Z");
        assert_eq!(b, "2026-11-28T02:05:42.149Z");
        assert!(a < b, "string order is time order");
        assert_eq!(a.len(), b.len());
        // Still RFC 3339.
        assert_eq!(OffsetDateTime::parse(&b, &Rfc3339).unwrap(), later);
    }

    #[test]
    fn grid_points_are_shared_and_strictly_ahead() {
        let period = Duration::from_millis(700);
        let _ = origin(); // set before `now`, as in a running deployex
        let now = tokio::time::Instant::now();
        let a = grid_after(now, period);
        assert!(a > now && a <= now + period, "within one period ahead");
        // Anyone asking within the same slot gets the same point.
        let b = grid_after(now + (a - now) / 2, period);
        assert_eq!(a, b);
        // On a grid point: the next one, a whole period later.
        assert_eq!(grid_after(a, period), a + period);
        assert_eq!(grid_after(now, Duration::ZERO), now);
        let next = next_on_grid(period);
        assert!(next >= tokio::time::Instant::now() + period / 2);
        assert!(next <= tokio::time::Instant::now() + period * 3 / 2 + Duration::from_millis(50));
    }
}
