"""The load harness: every number and chart in the docs is produced here, never typed by hand."""
