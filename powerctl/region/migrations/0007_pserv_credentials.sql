-- Per-cluster pserv credentials (issue 10): a pserv holding one is admitted
-- to that cluster only.  The secret is kept sealed by the region's key
-- (powerctl.region.vault): the region needs it to check the HMAC proof.
CREATE TABLE pserv_credentials (
    id text PRIMARY KEY,
    cluster text NOT NULL,
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT '',
    revoked_at timestamptz
);
