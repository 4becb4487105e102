"""The ingest function: a landed file, validated, into Feast; bad rows quarantined."""
