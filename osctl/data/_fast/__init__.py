"""Private fast paths of the data package (reading large annotation files, string facts, index writing)."""
