"""scheduler package (public names re-exported here)."""
