"""Scheduled operations above the engines: snapshot jobs (lock, upload, prune), hooks, Prometheus metrics and
restore rehearsals."""
