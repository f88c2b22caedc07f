//! Workspace snapshots (being written).
