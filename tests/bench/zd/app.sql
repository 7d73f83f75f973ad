\set id random(1, :rows)
SELECT status FROM jobs WHERE id = :id;
UPDATE jobs SET status = (ARRAY['queued','running','done','failed'])[1 + :id % 4] WHERE id = :id;
