//! FAT timestamps: a fixed clock for `fatfs`, and conversion between Unix seconds and FAT's
//! local-time fields, which pibake writes and reads as UTC.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use fatfs::{Date, DateTime, Time, TimeProvider};

/// A clock fixed at one instant, for `fatfs`, which wants a `'static` provider.
#[derive(Debug)]
pub(super) struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }

    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// One leaked provider per distinct clock value: builds use one clock, so this stays tiny.
pub(super) fn provider(epoch: i64) -> &'static FixedTime {
    static PROVIDERS: OnceLock<Mutex<HashMap<i64, &'static FixedTime>>> = OnceLock::new();
    let map = PROVIDERS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(epoch)
        .or_insert_with(|| Box::leak(Box::new(FixedTime(to_fat_time(epoch)))))
}

/// Days since 1970-01-01 to a (year, month, day) civil date, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// FAT can store 1980 to 2107; times outside are clamped to the nearest end.
pub(super) fn to_fat_time(epoch: i64) -> DateTime {
    const MIN: i64 = 315_532_800; // 1980-01-01
    const MAX: i64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = epoch.clamp(MIN, MAX);
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    DateTime {
        date: Date {
            year: y as u16,
            month: m as u16,
            day: d as u16,
        },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16,
            millis: 0,
        },
    }
}

pub(super) fn from_fat_time(t: DateTime) -> i64 {
    let days = days_from_civil(
        i64::from(t.date.year),
        u32::from(t.date.month),
        u32::from(t.date.day),
    );
    days * 86_400
        + i64::from(t.time.hour) * 3600
        + i64::from(t.time.min) * 60
        + i64::from(t.time.sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for t in [315_532_800i64, 1_700_000_000, 951_782_400, 4_107_542_398] {
            assert_eq!(from_fat_time(to_fat_time(t)), t, "{t}");
        }
        assert_eq!(
            from_fat_time(to_fat_time(0)),
            315_532_800,
            "clamped to 1980"
        );
        let d = to_fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((d.date.year, d.date.month, d.date.day), (2023, 11, 14));
        assert_eq!((d.time.hour, d.time.min, d.time.sec), (22, 13, 20));
    }
}
