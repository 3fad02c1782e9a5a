"""The device side: the split module's runtime, placement of a real model, the Lightning strategy."""
