"""Archive repositories: where snapshots are kept (a local directory or s3://bucket/prefix), their lock,
retention, metrics, hooks and restore rehearsals."""
