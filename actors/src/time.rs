//! UTC timestamps as operators read them (RFC 3339).

use time::OffsetDateTime;

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
}
