"""Training: train state with EMA teacher, optimizer, losses, the jitted step, the loop."""
