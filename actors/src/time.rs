//! UTC timestamps as operators read them (RFC 3339).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, UTC, RFC 3339 with millisecond precision.
pub fn utc_now_millis() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}
