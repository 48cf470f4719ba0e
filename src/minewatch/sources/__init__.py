"""Source modules: each turns one outside format into the canonical Arrow tables."""
