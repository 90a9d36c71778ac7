//! Time and ids, a leaf module (no other module of pipe in it): the one UTC time format of
//! records and logs, and new run ids. The formatting is by hand: one fixed format is not worth a
//! date crate's build time.

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ` (no date crate needed for one format).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn parse_utc(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 + ss) as u64)
}

/// A new id: the UTC time and 16 random bits (`20261202-013000-ab12`).
pub fn new_run_id() -> String {
    let t = utc_now();
    let compact: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let seed = format!("{nanos} {} {}", std::process::id(), unique());
    let h = blake3::hash(seed.as_bytes());
    let salt = u16::from_le_bytes([h.as_bytes()[0], h.as_bytes()[1]]);
    format!("{}-{}-{salt:04x}", &compact[..8], &compact[8..14])
}

/// A number no earlier call in this process returned.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_round_trip() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_795_824_000), "2026-11-28T00:00:00Z");
        for s in [0u64, 951_782_400, 1_795_881_645, 4_102_444_799] {
            assert_eq!(parse_utc(&format_utc(s)), Some(s));
        }
    }

    #[test]
    fn run_ids_are_time_and_salt() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_eq!(a.len(), "20261202-013000-ab12".len());
        assert_ne!(a, b);
    }
}
