"""Everything specific to Evolution API: the evolution-api profile's name transforms and .env reading
(`profile`), `statekit doctor` (`doctor`), the health figures an audit reports (`health`) and their
Prometheus families (`metrics`). The profile's entity model itself is data: `profiles/evolution/evolution_api.toml`."""
