"""Tier adapters: each knows its driver and nothing of archives, crypto or the other tiers."""
