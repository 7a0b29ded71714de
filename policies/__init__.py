"""policies package (public names re-exported here)."""
