"""The benchmark tables: NAS-Bench-201, NAS-Bench-101 and NAS-Bench-1Shot1 queries."""
