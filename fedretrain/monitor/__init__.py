"""The global drift monitor: summable site statistics, detectors and the trigger policy."""
