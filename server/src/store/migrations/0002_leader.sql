-- Server replicas (`--replica`): which one leads — runs the engine: the
-- queue, leases and schedules — until when, reachable where, and its
-- fencing epoch. One row. A replica takes the lead only once the lease has
-- expired, and raises the epoch when it does; every write of a leader
-- checks the epoch in its own transaction, so a leader that was paused and
-- lost its lease can commit nothing after its successor took over.
CREATE TABLE viaduct_leader (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL,
    holder TEXT NOT NULL,
    url TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
INSERT INTO viaduct_leader (id, epoch, holder, url, expires_at) VALUES (1, 0, '', '', 'epoch');
