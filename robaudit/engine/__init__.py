"""Engine: turns a plan into result rows. Knows nothing of the terminal (progress goes to an observer)."""
