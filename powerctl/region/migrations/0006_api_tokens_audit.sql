-- Who may use the REST API, and what they did (issue 10).
--
-- A token's secret is never stored: only its SHA-256 (tokens are 256 random
-- bits, so a plain hash is enough to make a dump useless).  A token may be
-- scoped to clusters (NULL: every cluster).  Revoked tokens stay for the
-- audit trail; a name is unique among the tokens not revoked.
CREATE TABLE api_tokens (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    clusters text[],
    hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT '',
    revoked_at timestamptz,
    revoked_by text
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;

-- Every change made through the API: who, from where, what, when, outcome.
-- Append-only: the trigger below refuses UPDATE and DELETE.
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    source text NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    status integer NOT NULL,
    outcome text NOT NULL
);

CREATE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
