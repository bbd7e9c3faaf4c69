"""The pserv: per-node registry of power actions, driving BMCs and PDUs for a region."""
