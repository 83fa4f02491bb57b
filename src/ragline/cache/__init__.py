"""The response cache: exact and semantic, scoped per tenant, never serving what its sources no longer say."""
