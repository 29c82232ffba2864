-- A workflow may run on a schedule: a cron expression in a time zone, and the next time
-- it is due (advanced by a compare-and-set, so one tick queues one run however many
-- controllers look).
ALTER TABLE workflows ADD COLUMN schedule_cron TEXT;
ALTER TABLE workflows ADD COLUMN schedule_tz TEXT;
ALTER TABLE workflows ADD COLUMN schedule_next_at INTEGER;
