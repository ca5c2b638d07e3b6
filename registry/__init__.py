"""Model registry: SQL store, artifact store, importers, analyse-once cache."""
