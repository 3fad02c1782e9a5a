"""Node costs for a traced graph: estimated from FLOPs or measured on each side, and cached."""
