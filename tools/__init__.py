"""Developer tools kept out of the runtime package (not shipped): the yardstick model's training code."""
