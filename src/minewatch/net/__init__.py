"""Network detection: decoding, TCP sessions, Stratum dialects, intelligence, hash rate."""
