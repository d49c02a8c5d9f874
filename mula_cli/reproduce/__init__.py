"""`mula reproduce`: the paper's tables as ordinary training runs, evaluated and set beside its numbers."""
