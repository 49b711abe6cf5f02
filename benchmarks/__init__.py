"""medxai's benchmarks: medxai and the peer library side by side in one process, as ratios."""
