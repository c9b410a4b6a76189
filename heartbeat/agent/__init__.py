"""The agent: the beat loop, its head sources (Lotus, static, simulated) and its command line."""
