"""`plantpulse bench ...`: benchmarks that print medians and same-run reference ratios and
write docs/benchmarks.md (see PERFORMANCE.md for the method)."""
