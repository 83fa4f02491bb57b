-- Access control: tenants, API keys (hashes only), budgets (usage per window and open
-- reservations) and spend per request. Money in integer nano-dollars, times in Unix seconds.

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    budget_nano BIGINT,
    budget_period TEXT,
    rate_requests TEXT,
    rate_tokens TEXT
);

CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    tenant TEXT NOT NULL REFERENCES tenants (name),
    role TEXT NOT NULL CHECK (role IN ('admin', 'app')),
    name TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    models TEXT,
    budget_nano BIGINT,
    budget_period TEXT,
    rate_requests TEXT,
    rate_tokens TEXT
);

CREATE INDEX api_keys_tenant ON api_keys (tenant);

CREATE TABLE access_revision (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);

INSERT INTO access_revision (id, revision) VALUES (1, 0);

CREATE TABLE budget_usage (
    scope TEXT NOT NULL,
    win TEXT NOT NULL,
    spent_nano BIGINT NOT NULL DEFAULT 0,
    reserved_nano BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, win)
);

CREATE TABLE budget_reservations (
    id TEXT NOT NULL,
    scope TEXT NOT NULL,
    win TEXT NOT NULL,
    amount_nano BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (id, scope, win)
);

CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_at);

CREATE TABLE spend (
    id INTEGER PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    tenant TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    deployment TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_nano BIGINT NOT NULL,
    cached INTEGER NOT NULL,
    request_id TEXT NOT NULL DEFAULT ''
);

CREATE INDEX spend_ts ON spend (ts);
