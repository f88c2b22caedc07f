-- Every tree of the store: (tree name, key) → value; bytea orders keys
-- byte by byte, as every backend must.
CREATE TABLE viaduct_kv (
    tree TEXT NOT NULL,
    k BYTEA NOT NULL,
    v BYTEA NOT NULL,
    PRIMARY KEY (tree, k)
);

-- Ids that only grow (Kv::generate_id).
CREATE SEQUENCE viaduct_ids;
