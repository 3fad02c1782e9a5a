"""The planner's world, plain data and pure functions: profiles, the cost model, min cuts (no torch)."""
