//! Times in the person's zone: quiet hours, the best hour to send, calendar days.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A time of day, in minutes from midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalTime(pub u32);

impl LocalTime {
    /// "HH:MM", 00:00 to 23:59.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a time of day: \"HH:MM\", 00:00 to 23:59");
        let (h, m) = text.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        match h < 24 && m < 60 {
            true => Ok(Self(h * 60 + m)),
            false => Err(bad()),
        }
    }
}

/// An IANA time zone.
pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("{name:?} is not a time zone: an IANA name such as \"Europe/Paris\""))
}

/// The local date of `at` in `tz`.
pub fn local_date(at: DateTime<Utc>, tz: Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// The first instant at or after `at` outside the quiet hours `[start, end)` (over
/// midnight when end < start), in `tz`; `at` itself when it is outside them.
pub fn after_quiet_hours(at: DateTime<Utc>, start: LocalTime, end: LocalTime, tz: Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let quiet = match start < end {
        true => (start.0..end.0).contains(&minute),
        false => minute >= start.0 || minute < end.0,
    };
    if !quiet {
        return at;
    }
    // The end on the local day it falls on: today when it is later in the day, else
    // tomorrow.
    let day = match minute < end.0 {
        true => local.date_naive(),
        false => local.date_naive() + Duration::days(1),
    };
    local_instant(day, end.0, tz)
}

/// The instant of a local day and minute in `tz`; across a gap (spring forward), the
/// first instant after it.
pub fn local_instant(day: NaiveDate, minute: u32, tz: Tz) -> DateTime<Utc> {
    let naive = day
        .and_hms_opt(minute / 60, minute % 60, 0)
        .expect("a valid time of day");
    for shift in 0..=3 {
        let candidate = naive + Duration::hours(shift);
        if let Some(t) = tz.from_local_datetime(&candidate).earliest() {
            return t.with_timezone(&Utc);
        }
    }
    naive.and_utc()
}

/// The next `minute` of the day (local) at or after `at`, within a day.
pub fn next_local(at: DateTime<Utc>, minute: u32, tz: Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    let now = local.hour() * 60 + local.minute();
    let day = match now <= minute {
        true => local.date_naive(),
        false => local.date_naive() + Duration::days(1),
    };
    local_instant(day, minute, tz).max(at)
}

/// The next start of `hour` (0–23, local) at or after `at`, within a day.
pub fn next_hour(at: DateTime<Utc>, hour: u32, tz: Tz) -> DateTime<Utc> {
    let local = at.with_timezone(&tz);
    if local.hour() == hour {
        return at;
    }
    let day = match local.hour() < hour {
        true => local.date_naive(),
        false => local.date_naive() + Duration::days(1),
    };
    local_instant(day, hour * 60, tz)
}

/// The calendar days `[from, to]` around `at`'s local date that a cap of `days`
/// calendar days looks at: every day whose window of `days` days holds `at`'s date.
pub fn calendar_span(at: DateTime<Utc>, days: u32, tz: Tz) -> (NaiveDate, NaiveDate) {
    let date = local_date(at, tz);
    let back = Duration::days(i64::from(days) - 1);
    (date - back, date + back)
}

/// The hour of the week (0 = Monday 00:00) of `at` in `tz`.
pub fn hour_of_week(at: DateTime<Utc>, tz: Tz) -> u32 {
    let local = at.with_timezone(&tz);
    local.weekday().num_days_from_monday() * 24 + local.hour()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn times_of_day_parse_strictly() {
        assert_eq!(LocalTime::parse("08:30"), Ok(LocalTime(510)));
        for bad in ["8:30", "24:00", "12:60", "noon", "12-00"] {
            assert!(LocalTime::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_send_in_quiet_hours_waits_for_their_end_in_the_persons_zone() {
        let paris = zone("Europe/Paris").unwrap();
        let (start, end) = (LocalTime::parse("21:00").unwrap(), LocalTime::parse("08:00").unwrap());
        // 22:30 in Paris (CET, UTC+1) is quiet: deferred to 08:00 the next morning.
        assert_eq!(
            after_quiet_hours(utc("2026-01-15T21:30:00Z"), start, end, paris),
            utc("2026-01-16T07:00:00Z")
        );
        // 06:00 in Paris: to 08:00 the same day.
        assert_eq!(
            after_quiet_hours(utc("2026-01-15T05:00:00Z"), start, end, paris),
            utc("2026-01-15T07:00:00Z")
        );
        // 12:00: not quiet.
        let noon = utc("2026-01-15T11:00:00Z");
        assert_eq!(after_quiet_hours(noon, start, end, paris), noon);
        // A daytime quiet span (12:00–14:00) in New York (EST, UTC-5).
        let ny = zone("America/New_York").unwrap();
        let (s, e) = (LocalTime::parse("12:00").unwrap(), LocalTime::parse("14:00").unwrap());
        assert_eq!(
            after_quiet_hours(utc("2026-01-15T17:30:00Z"), s, e, ny),
            utc("2026-01-15T19:00:00Z")
        );
    }

    #[test]
    fn the_next_hour_and_calendar_days_are_local() {
        let tokyo = zone("Asia/Tokyo").unwrap();
        // 23:00 UTC is 08:00 the next day in Tokyo; 18:00 there is 09:00 UTC.
        assert_eq!(
            next_hour(utc("2026-03-01T23:00:00Z"), 18, tokyo),
            utc("2026-03-02T09:00:00Z")
        );
        assert_eq!(
            calendar_span(utc("2026-03-01T23:00:00Z"), 2, tokyo),
            ("2026-03-01".parse().unwrap(), "2026-03-03".parse().unwrap())
        );
        // 2026-03-02 is a Monday; 08:00 in Tokyo.
        assert_eq!(hour_of_week(utc("2026-03-01T23:00:00Z"), tokyo), 8);
    }
}
