-- Workflow and run ids are never reused. Their tables have no AUTOINCREMENT (adding it
-- means rebuilding tables that others reference), so SQLite would hand a deleted
-- newest row's id to the next insert, and a new workflow or run inherited what an agent
-- kept under the old id. Inserts take the next id from here instead, in their own
-- transaction; seeded with the highest id in use.
CREATE TABLE id_sequences (
    name TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO id_sequences (name, last) VALUES
    ('workflows', COALESCE((SELECT MAX(id) FROM workflows), 0)),
    ('runs', COALESCE((SELECT MAX(id) FROM runs), 0));
