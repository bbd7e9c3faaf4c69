"""The region: desired and current power state in PostgreSQL, the REST API and AMP."""
