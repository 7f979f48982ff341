"""Model recipes (one TOML file per model), installed as the package `edgeai._recipes`."""
