-- depends: 0001.access
-- A reservation over several budgets (a key's and its tenant's) in one round trip: for each budget,
-- the window's row gets the amount only if spent + reserved + amount <= limit; if any does not fit,
-- everything the call did is rolled back (the block's subtransaction) and it returns false.

CREATE FUNCTION ragline_reserve(
    p_id TEXT,
    p_scopes TEXT[],
    p_wins TEXT[],
    p_amounts BIGINT[],
    p_limits BIGINT[],
    p_expires DOUBLE PRECISION
) RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. cardinality(p_scopes) LOOP
        INSERT INTO budget_usage AS u (scope, win, spent_nano, reserved_nano)
        SELECT p_scopes[i], p_wins[i], 0, p_amounts[i] WHERE p_amounts[i] <= p_limits[i]
        ON CONFLICT (scope, win) DO UPDATE SET reserved_nano = u.reserved_nano + excluded.reserved_nano
        WHERE u.spent_nano + u.reserved_nano + excluded.reserved_nano <= p_limits[i];
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'RLB01', MESSAGE = 'budget exceeded';
        END IF;
        INSERT INTO budget_reservations (id, scope, win, amount_nano, expires_at)
        VALUES (p_id, p_scopes[i], p_wins[i], p_amounts[i], p_expires);
    END LOOP;
    RETURN TRUE;
EXCEPTION WHEN SQLSTATE 'RLB01' THEN
    RETURN FALSE;
END
$$;
