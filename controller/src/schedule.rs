//! Workflow schedules: a cron expression in an IANA time zone, parsed by `jiff-cron`
//! (daylight-saving gaps and folds handled by jiff). This module owns the grammar we
//! accept and the next time a schedule is due; the `Scheduler` loop queues the runs.
//!
//! Expressions are crontab's five fields (`minute hour day-of-month month day-of-week`,
//! day-of-week 0–7 with 0 and 7 for Sunday, or names), or six with seconds first.
//! jiff-cron numbers weekdays from 1 = Sunday (Quartz's convention), so numeric weekdays
//! are turned into names here: `1-5` means Monday to Friday, as in every crontab.

use jiff_cron::jiff::{tz::TimeZone, Timestamp, Zoned};
use std::str::FromStr;

/// A parsed schedule: when it fires, in which zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: jiff_cron::Schedule,
    tz: TimeZone,
}

const DAYS: [&str; 8] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];

/// Crontab's numeric weekdays as names (steps after `/` stay numbers).
fn weekday_names(field: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut after_slash = false;
    let mut digits = String::new();
    let flush =
        |digits: &mut String, out: &mut String, after_slash: bool| {
            if digits.is_empty() {
                return Ok(());
            }
            if after_slash {
                out.push_str(digits);
            } else {
                let n: usize = digits
                    .parse()
                    .map_err(|_| format!("{digits} is not a weekday"))?;
                out.push_str(DAYS.get(n).ok_or_else(|| {
                    format!("weekday {n} is out of range (0–7, 0 and 7 are Sunday)")
                })?);
            }
            digits.clear();
            Ok::<(), String>(())
        };
    for c in field.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        flush(&mut digits, &mut out, after_slash)?;
        match c {
            '/' => after_slash = true,
            ',' => after_slash = false,
            _ => {}
        }
        out.push(c);
    }
    flush(&mut digits, &mut out, after_slash)?;
    Ok(out)
}

impl Schedule {
    /// Parses `cron` in time zone `tz` (an IANA name such as `Europe/Berlin`, or `UTC`).
    /// Errors name the field: `schedule.cron: …`, `schedule.timezone: …`.
    pub fn parse(cron: &str, tz: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if cron.len() > 200 || !(5..=6).contains(&fields.len()) {
            return Err(
                "schedule.cron: expected five fields (minute hour day-of-month month day-of-week) or six with seconds first"
                    .into(),
            );
        }
        let mut full: Vec<String> = fields.iter().map(|f| (*f).to_owned()).collect();
        if full.len() == 5 {
            full.insert(0, "0".into());
        }
        full[5] = weekday_names(&full[5]).map_err(|e| format!("schedule.cron: {e}"))?;
        let cron = jiff_cron::Schedule::from_str(&full.join(" "))
            .map_err(|e| format!("schedule.cron: {e}"))?;
        if tz.is_empty() || tz.len() > 64 {
            return Err(
                "schedule.timezone: expected an IANA time zone such as Europe/Berlin".into(),
            );
        }
        let tz = TimeZone::get(tz)
            .map_err(|_| format!("schedule.timezone: {tz:?} is not a known time zone"))?;
        let s = Schedule { cron, tz };
        // An expression that never fires again (Feb 30th) is refused, not stored.
        if s.next_after(crate::time::now_secs()).is_none() {
            return Err("schedule.cron: this expression never fires".into());
        }
        Ok(s)
    }

    /// The first time (Unix seconds) strictly after `after` that the schedule fires.
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let t = Timestamp::from_second(after).ok()?;
        let z: Zoned = t.to_zoned(self.tz.clone());
        self.cron.after(z).next().map(|z| z.timestamp().as_second())
    }
}

/// The loop that queues scheduled runs: once a second it looks for workflows whose
/// schedule is due, moves each to its next tick by a compare-and-set (only the winner
/// queues, so a tick is never queued twice) and queues one run with trigger `schedule`
/// unless one from an earlier tick is still waiting. The next tick is computed from now,
/// not from the missed one: ticks missed while the controller was down are run once, not
/// replayed one by one.
pub async fn run(deploys: crate::deploy::Deploys, closing: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            () = closing.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
        if let Err(e) = tick(&deploys, crate::time::now_secs()).await {
            tracing::warn!(error = %e, "scheduled runs: store unavailable");
        }
    }
}

async fn tick(deploys: &crate::deploy::Deploys, now: i64) -> crate::store::Result<()> {
    let store = deploys.store();
    for wf in store.due_schedules(now).await? {
        let (Some((cron, tz)), Some(due)) = (wf.schedule.clone(), wf.schedule_next_at) else {
            continue;
        };
        // A stored schedule that no longer parses (a time zone gone from tzdata) stops
        // rather than firing every second; the API shows it without a next time.
        let next = Schedule::parse(&cron, &tz)
            .ok()
            .and_then(|s| s.next_after(now));
        let claimed = match next {
            Some(next) => store.advance_schedule(wf.id, due, next).await?,
            None => {
                tracing::warn!(workflow = wf.id, cron = %cron, tz = %tz, "schedule cannot fire again; stopped");
                store.set_schedule(wf.id, None).await?;
                false
            }
        };
        if !claimed {
            continue;
        }
        if store.scheduled_run_waiting(wf.id).await? {
            tracing::info!(
                workflow = wf.id,
                "scheduled tick skipped: the last one is still queued"
            );
            continue;
        }
        let detail = serde_json::json!({
            "schedule": cron,
            "timezone": tz,
            "tick": crate::time::rfc3339(due),
        });
        match crate::deploy::enqueue(deploys, &wf, "schedule", detail, None).await {
            Ok(Some(run)) => tracing::info!(workflow = wf.id, run, "scheduled run queued"),
            Ok(None) => {}
            Err(e) => tracing::warn!(workflow = wf.id, error = %e, "scheduled run not queued"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_second()
    }

    #[test]
    fn crontab_weekdays_and_zones() {
        // 2026-12-04 is a Friday. Weekdays 1-5 at 09:00 in Berlin (UTC+1 in winter).
        let s = Schedule::parse("0 9 * * 1-5", "Europe/Berlin").expect("parse");
        assert_eq!(
            s.next_after(at("2026-12-04T09:00:00Z")),
            Some(at("2026-12-07T08:00:00Z")),
            "Friday 10:00 Berlin → Monday 09:00 Berlin"
        );
        // 0 and 7 are both Sunday.
        for dow in ["0", "7", "SUN"] {
            let s = Schedule::parse(&format!("30 6 * * {dow}"), "UTC").expect("parse");
            assert_eq!(
                s.next_after(at("2026-12-04T00:00:00Z")),
                Some(at("2026-12-06T06:30:00Z")),
                "{dow}"
            );
        }
        // Six fields: seconds first.
        let s = Schedule::parse("*/2 * * * * *", "UTC").expect("parse");
        assert_eq!(s.next_after(100), Some(102));
        // A daylight-saving jump: 02:30 does not exist in Berlin on 2027-03-28.
        let s = Schedule::parse("30 2 * * *", "Europe/Berlin").expect("parse");
        let next = s.next_after(at("2027-03-27T12:00:00Z")).expect("next");
        assert!(next > at("2027-03-27T12:00:00Z"));
    }

    #[test]
    fn bad_schedules_name_their_field() {
        for (cron, tz, field) in [
            ("* * * *", "UTC", "schedule.cron"),
            ("61 * * * *", "UTC", "schedule.cron"),
            ("* * * * 8", "UTC", "schedule.cron"),
            ("* * 30 2 *", "UTC", "schedule.cron"),
            ("* * * * *", "Mars/Olympus", "schedule.timezone"),
            ("* * * * *", "", "schedule.timezone"),
        ] {
            let e = Schedule::parse(cron, tz).expect_err(cron);
            assert!(e.starts_with(field), "{cron} {tz}: {e}");
        }
    }
}
